"""SiTTransformer2DModel and REPAProjector: parity with the official SiT, presets, save/load, training features."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffusers_repa import SIT_PRESETS, REPAProjector, SiTTransformer2DModel
from diffusers_repa.convert import convert_official_state_dict
from diffusers_repa.models.sit_transformer_2d import SiTAttnProcessor

from .reference_sit import random_official_state_dict, reference_forward

FIXTURES = Path(__file__).parent / "fixtures" / "official-repa"
TINY_CONFIG = {"num_attention_heads": 6, "alignment_depth": 3}


@pytest.fixture(scope="module")
def official_tiny():
    return load_file(FIXTURES / "tiny_sit_state_dict.safetensors"), load_file(FIXTURES / "tiny_sit_forward.safetensors")


@pytest.fixture(scope="module")
def tiny_models(official_tiny):
    return convert_official_state_dict(official_tiny[0], **TINY_CONFIG)


def small_model(**overrides) -> SiTTransformer2DModel:
    config = dict(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=3,
        num_attention_heads=2,
        attention_head_dim=8,
        num_classes=10,
        alignment_depth=2,
    )
    config.update(overrides)
    torch.manual_seed(0)
    model = SiTTransformer2DModel(**config)
    # A fresh model outputs exactly zero (adaLN-zero init); perturb so every output depends on every weight.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


def small_inputs(batch=3, channels=4, size=8, num_classes=10):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, channels, size, size, generator=gen)
    t = torch.rand(batch, generator=gen)
    y = torch.randint(0, num_classes + 1, (batch,), generator=gen)
    return x, t, y


class TestOfficialParity:
    def test_velocity_and_projection_match_official(self, tiny_models, official_tiny):
        transformer, projector = tiny_models
        _, fw = official_tiny
        with torch.no_grad():
            out = transformer(fw["x"], fw["t"], fw["y"], output_alignment_states=True)
            (zs,) = projector(out.alignment_states)
        torch.testing.assert_close(out.sample, fw["out"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(zs, fw["zs_0"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.alignment_states, fw["block_2_out"], atol=1e-5, rtol=1e-5)

    def test_every_intermediate_matches_official(self, tiny_models, official_tiny):
        transformer, _ = tiny_models
        _, fw = official_tiny
        with torch.no_grad():
            t_freq = transformer.time_proj(fw["t"])
            t_emb = transformer.timestep_embedder(t_freq)
            y_emb = transformer.class_embedder(fw["y"])
            patches = transformer.pos_embed.proj(fw["x"]).flatten(2).transpose(1, 2)
            hidden = transformer.pos_embed(fw["x"])
            blocks = []
            for block in transformer.transformer_blocks:
                hidden = block(hidden, t_emb + y_emb)
                blocks.append(hidden)
        for name, ours in {
            "t_freq": t_freq,
            "t_emb": t_emb,
            "y_emb": y_emb,
            "c": t_emb + y_emb,
            "patch_embed_out": patches,
        }.items():
            torch.testing.assert_close(ours, fw[name], atol=1e-6, rtol=1e-5, msg=name)
        for index, ours in enumerate(blocks):
            torch.testing.assert_close(ours, fw[f"block_{index}_out"], atol=1e-5, rtol=1e-5)

    @pytest.mark.parametrize("grid,dim", [(4, 64), (16, 32), (32, 32)])
    def test_pos_embed_matches_official_table(self, grid, dim):
        model = SiTTransformer2DModel(
            sample_size=grid * 2,
            patch_size=2,
            num_layers=1,
            num_attention_heads=1,
            attention_head_dim=dim,
            alignment_depth=1,
        )
        expected = load_file(FIXTURES / "misc.safetensors")[f"pos_embed_grid{grid}_dim{dim}"]
        torch.testing.assert_close(model.pos_embed.pos_embed, expected, atol=1e-6, rtol=0)

    @pytest.mark.parametrize(
        "hidden,heads,depth,patch,grid,channels,encoder_depth,qk_norm",
        [(64, 4, 3, 4, 3, 4, 1, False), (48, 2, 2, 1, 5, 3, 2, False), (32, 2, 2, 2, 4, 4, 2, True)],
    )
    def test_other_configs_match_the_official_maths(
        self, hidden, heads, depth, patch, grid, channels, encoder_depth, qk_norm
    ):
        sd = random_official_state_dict(
            hidden,
            depth,
            patch,
            channels,
            grid,
            num_classes=7,
            z_dims=[5, 9],
            projector_dim=16,
            qk_norm=qk_norm,
            heads=heads,
            seed=hidden,
        )
        transformer, projector = convert_official_state_dict(
            sd, num_attention_heads=heads, alignment_depth=encoder_depth
        )
        assert transformer.config.qk_norm is qk_norm
        size = grid * patch
        gen = torch.Generator().manual_seed(3)
        x = torch.randn(2, channels, size, size, generator=gen)
        t, y = torch.tensor([0.3, 1.0]), torch.tensor([0, 7])
        with torch.no_grad():
            out = transformer(x, t, y, output_alignment_states=True)
            zs = projector(out.alignment_states)
            ref_out, ref_zs = reference_forward(sd, x, t, y, heads, encoder_depth)
        torch.testing.assert_close(out.sample, ref_out, atol=1e-5, rtol=1e-5)
        for ours, ref in zip(zs, ref_zs, strict=True):
            torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


class TestPresets:
    def test_parameter_counts_equal_the_official(self):
        counts = json.loads((FIXTURES / "fixtures.json").read_text())["param_counts_input32_zdim768"]
        for name, expected in counts.items():
            kwargs = expected["constructor_kwargs"]
            with torch.device("meta"):
                model = SiTTransformer2DModel.from_preset(name, alignment_depth=kwargs["encoder_depth"])
                projector = REPAProjector(hidden_size=model.hidden_size, projector_dim=2048, z_dims=[768])
            assert model.num_parameters() == expected["trainable_params_without_projectors"], name
            assert model.pos_embed.pos_embed.numel() == expected["pos_embed_params"], name
            assert projector.num_parameters() == expected["projector_params"], name

    def test_sit_xl_2_has_the_issue_numbers(self):
        with torch.device("meta"):
            model = SiTTransformer2DModel.from_preset("SiT-XL/2", alignment_depth=8)
        assert model.num_parameters() == 674_816_272
        assert model.pos_embed.pos_embed.numel() == 294_912
        assert "pos_embed.pos_embed" not in model.state_dict()  # fixed table: recomputed, never saved

    def test_all_twelve_presets_build_and_run_sit_s_included(self):
        assert len(SIT_PRESETS) == 12
        model = SiTTransformer2DModel.from_preset("SiT-S/8", sample_size=16, alignment_depth=4, num_classes=3).eval()
        out = model(
            torch.randn(2, 4, 16, 16), torch.tensor([0.5, 1.0]), torch.tensor([0, 3]), output_alignment_states=True
        )
        assert out.sample.shape == (2, 4, 16, 16)
        assert out.alignment_states.shape == (2, 4, 384)

    def test_unknown_preset_names_the_choices(self):
        with pytest.raises(ValueError, match="SiT-XL/2"):
            SiTTransformer2DModel.from_preset("SiT-XXL/2")


class TestModelBehaviour:
    def test_fresh_model_predicts_zero(self):
        model = SiTTransformer2DModel(
            sample_size=8, num_layers=2, num_attention_heads=2, attention_head_dim=8, alignment_depth=1
        )
        x, t, y = small_inputs()
        assert torch.count_nonzero(model(x, t, y).sample) == 0

    def test_return_dict_false_and_alignment_flag(self):
        model = small_model().eval()
        x, t, y = small_inputs()
        (sample,) = model(x, t, y, return_dict=False)
        sample2, states = model(x, t, y, return_dict=False, output_alignment_states=True)
        assert torch.equal(sample, sample2) and states.shape == (3, 16, 16)
        assert model(x, t, y).alignment_states is None

    def test_scalar_timestep_broadcasts(self):
        model = small_model().eval()
        x, _, y = small_inputs()
        torch.testing.assert_close(model(x, 0.5, y).sample, model(x, torch.full((3,), 0.5), y).sample)

    def test_label_dropout_only_in_train_mode(self):
        model = small_model(class_dropout_prob=0.5)
        x, t, _ = small_inputs(batch=64)
        y = torch.zeros(64, dtype=torch.long)
        null_out = model.eval()(x, t, torch.full((64,), 10)).sample
        torch.manual_seed(0)
        train_out = model.train()(x, t, y).sample
        dropped = torch.isclose(train_out, null_out, atol=1e-6).flatten(1).all(1)
        assert 10 < int(dropped.sum()) < 54  # about half of the labels replaced by the null class
        eval_out = model.eval()(x, t, y).sample
        assert not torch.isclose(eval_out, null_out, atol=1e-6).flatten(1).all(1).any()

    def test_save_and_load_round_trip(self, tmp_path):
        model = small_model(qk_norm=True).eval()
        x, t, y = small_inputs()
        model.save_pretrained(tmp_path)
        assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
        loaded = SiTTransformer2DModel.from_pretrained(tmp_path).eval()
        public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
        assert public(loaded.config) == public(model.config)
        assert torch.equal(loaded(x, t, y).sample, model(x, t, y).sample)

    def test_gradient_checkpointing_gives_identical_loss_and_gradients(self):
        """Checkpointing every block or only the first `num_blocks` (exactly those) leaves loss and gradients equal."""
        x, t, y = small_inputs()
        results = []
        for num_blocks in ("off", None, 1):
            model = small_model().train()
            calls = []

            def checkpoint(block, *args, calls=calls):
                calls.append(block)
                return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=False)

            if num_blocks != "off":
                model.enable_gradient_checkpointing(checkpoint, num_blocks=num_blocks)
            torch.manual_seed(5)
            out = model(x, t, y, output_alignment_states=True)
            loss = out.sample.square().mean() + out.alignment_states.mean()
            loss.backward()
            results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
            blocks = list(model.transformer_blocks)
            expected = {"off": [], None: blocks, 1: blocks[:1]}[num_blocks]
            assert calls == expected
            with torch.no_grad():
                model(x, t, y)
            assert calls == expected  # nothing is checkpointed without gradients
        for loss, grads in results[1:]:
            assert torch.equal(results[0][0], loss)
            for name, grad in results[0][1].items():
                assert torch.equal(grad, grads[name]), name

    @pytest.mark.parametrize("num_blocks", [0, 4, 1.5, True])
    def test_gradient_checkpointing_refuses_a_block_count_the_model_does_not_have(self, num_blocks):
        model = small_model()
        with pytest.raises(ValueError, match=r"`num_blocks` must be an int in \[1, 3\] \(the model's blocks\)"):
            model.enable_gradient_checkpointing(num_blocks=num_blocks)
        assert not model.gradient_checkpointing

    def test_attention_processor_can_be_swapped(self):
        model = small_model().eval()
        x, t, y = small_inputs()
        expected = model(x, t, y).sample
        assert len(model.attn_processors) == 3
        calls = []

        class RecordingProcessor(SiTAttnProcessor):
            def __call__(self, attn, hidden_states):
                calls.append(hidden_states.shape)
                return super().__call__(attn, hidden_states)

        model.set_attn_processor(RecordingProcessor())
        assert all(isinstance(p, RecordingProcessor) for p in model.attn_processors.values())
        torch.testing.assert_close(model(x, t, y).sample, expected, atol=0, rtol=0)
        assert calls == [(3, 16, 16)] * 3

    def test_bf16_and_fp16_forward_close_to_fp32(self):
        model = small_model().eval()
        x, t, y = small_inputs()
        expected = model(x, t, y).sample
        for dtype in (torch.bfloat16, torch.float16):
            low = model.to(dtype)(x.to(dtype), t.to(dtype), y).sample
            assert low.dtype == dtype
            torch.testing.assert_close(low.float(), expected, atol=5e-2, rtol=5e-2)
            model.float()

    def test_compiles_without_graph_breaks(self):
        torch._dynamo.reset()
        model = small_model().eval()
        x, t, y = small_inputs()
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x, t, y, output_alignment_states=True).sample, model(x, t, y).sample)

    def test_lora_adapter_adds_saves_loads_and_toggles(self, tmp_path):
        from peft import LoraConfig

        model = small_model().eval()
        x, t, y = small_inputs()
        base = model(x, t, y).sample
        model.add_adapter(
            LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        )
        with_lora = model(x, t, y).sample
        assert not torch.allclose(with_lora, base)
        model.disable_adapters()
        torch.testing.assert_close(model(x, t, y).sample, base)
        model.enable_adapters()
        model.save_lora_adapter(tmp_path)
        fresh = small_model().eval()
        fresh.load_lora_adapter(
            tmp_path, weight_name="pytorch_lora_weights.safetensors", adapter_name="repa", prefix=None
        )
        torch.testing.assert_close(fresh(x, t, y).sample, with_lora)
        fresh.disable_adapters()
        torch.testing.assert_close(fresh(x, t, y).sample, base)


class TestInputErrors:
    @pytest.mark.parametrize(
        "x_shape,t,y,match",
        [
            ((2, 4, 6, 6), [0.1, 0.2], [1, 2], "hidden_states"),
            ((2, 3, 8, 8), [0.1, 0.2], [1, 2], "in_channels=4"),
            ((2, 4, 8, 8), [0.1, 0.2, 0.3], [1, 2], "timestep"),
            ((2, 4, 8, 8), [0.1, 0.2], [1], "class_labels"),
            ((2, 4, 8, 8), [0.1, 0.2], [1, 11], r"\[0, 10\]"),
            ((2, 4, 8, 8), [0.1, 0.2], [-1, 2], r"\[0, 10\]"),
        ],
    )
    def test_bad_inputs_raise_value_errors(self, x_shape, t, y, match):
        model = small_model().eval()
        with pytest.raises(ValueError, match=match):
            model(torch.randn(*x_shape), torch.tensor(t), torch.tensor(y))

    def test_float_labels_are_refused(self):
        with pytest.raises(ValueError, match="integer"):
            small_model()(torch.randn(1, 4, 8, 8), 0.5, torch.tensor([1.0]))

    @pytest.mark.parametrize("depth", [0, 4])
    def test_alignment_depth_outside_the_blocks_is_refused(self, depth):
        with pytest.raises(ValueError, match="alignment_depth"):
            small_model(alignment_depth=depth)

    def test_projector_checks_its_input(self):
        with pytest.raises(ValueError, match="alignment_states"):
            REPAProjector(hidden_size=16, projector_dim=8, z_dims=[4])(torch.randn(2, 5, 17))
        with pytest.raises(ValueError, match="z_dims"):
            REPAProjector(hidden_size=16, projector_dim=8, z_dims=[])

    @pytest.mark.parametrize("t", [[500.0, 0.5], [0.5, -0.01], [0.5, float("nan")], [1000, 1]])
    def test_timesteps_outside_zero_one_are_refused(self, t):
        # The x1000 convention of diffusers' FlowMatch schedulers would silently give a wrong velocity.
        with pytest.raises(ValueError, match=r"flow time t in \[0, 1\].*1000"):
            small_model().eval()(torch.randn(2, 4, 8, 8), torch.tensor(t), torch.tensor([1, 2]))

    def test_the_ends_of_the_time_range_are_accepted(self):
        model = small_model().eval()
        assert model(torch.randn(2, 4, 8, 8), torch.tensor([0.0, 1.0]), torch.tensor([1, 2])).sample.isfinite().all()

    def test_class_labels_as_list_numpy_or_int(self):
        model = small_model().eval()
        x, t, y = small_inputs()
        expected = model(x, t, y).sample
        assert torch.equal(model(x, t, y.tolist()).sample, expected)
        assert torch.equal(model(x, t, y.numpy()).sample, expected)
        assert torch.equal(model(x, t, [np.int64(v) for v in y.tolist()]).sample, expected)
        assert torch.equal(model(x, t, np.int64(3)).sample, model(x, t, torch.full((3,), 3)).sample)
        for bad in ([1.0, 2.0, 3.0], [True, False, True], "cat", [[1, 2, 3]], torch.tensor([True, False, True])):
            with pytest.raises(ValueError, match="class_labels"):
                model(x, t, bad)
        with pytest.raises(ValueError, match=r"\[0, 10\]"):
            model(x, t, [1, 2, 11])

    @pytest.mark.parametrize(
        "override",
        [
            {"num_attention_heads": 0},
            {"attention_head_dim": -8},
            {"num_layers": 0},
            {"patch_size": 0},
            {"sample_size": 0},
            {"in_channels": 0},
            {"out_channels": 0},
            {"num_classes": 0},
            {"num_attention_heads": 2.5},
            {"num_layers": True},
            {"mlp_ratio": 0},
            {"class_dropout_prob": 1.0},
            {"class_dropout_prob": -0.1},
        ],
    )
    def test_non_positive_config_values_are_refused(self, override):
        (name,) = override
        with pytest.raises(ValueError, match=f"`{name}` must be"):
            small_model(**override)

    def test_projector_config_values_are_checked(self):
        for config, name in (
            ({"hidden_size": 0}, "hidden_size"),
            ({"projector_dim": -1}, "projector_dim"),
            ({"z_dims": [768, 0]}, "z_dims"),
            ({"z_dims": 768}, "z_dims"),
        ):
            with pytest.raises(ValueError, match=name):
                REPAProjector(**{"hidden_size": 16, "projector_dim": 8, "z_dims": [4], **config})


class TestStrictLoading:
    """Weights that do not fit the config are an error for our classes, not a warning."""

    @staticmethod
    def edit_config(folder, **changes):
        config = json.loads((folder / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps(config))

    @pytest.mark.parametrize("num_layers, kind", [(2, "no place for"), (4, "does not hold")])
    def test_a_num_layers_that_disagrees_with_the_weights(self, tmp_path, num_layers, kind):
        small_model().save_pretrained(tmp_path)  # 3 blocks
        self.edit_config(tmp_path, num_layers=num_layers, alignment_depth=2)
        expected = f"do not fit the SiTTransformer2DModel config.*{kind}.*transformer_blocks"
        with pytest.raises(ValueError, match=expected):
            SiTTransformer2DModel.from_pretrained(tmp_path)

    def test_a_matching_folder_loads_and_loading_info_is_still_available(self, tmp_path):
        small_model().save_pretrained(tmp_path)
        model, info = SiTTransformer2DModel.from_pretrained(tmp_path, output_loading_info=True)
        assert isinstance(model, SiTTransformer2DModel) and not info["missing_keys"] and not info["unexpected_keys"]

    def test_projector_with_fewer_heads_in_the_config(self, tmp_path):
        REPAProjector(hidden_size=16, projector_dim=8, z_dims=[4, 6]).save_pretrained(tmp_path)
        self.edit_config(tmp_path, z_dims=[4])
        with pytest.raises(ValueError, match="REPAProjector config.*no place for.*projectors.1"):
            REPAProjector.from_pretrained(tmp_path)

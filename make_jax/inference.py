"""Zero-shot inference API: `make_jax.load(path)` → an `Encoder` with tokenize / preprocess / encode_*.

    import make_jax
    from PIL import Image

    m = make_jax.load("make")     # a registry name, hf-hub:ORG/NAME, an open_clip/HF dir or a make_jax checkpoint
    img = m.encode_image([Image.open("lesion.jpg")])          # (1, 512) float32, L2-normalised
    txt = m.encode_text(["a photo of eczema", "a photo of psoriasis"])   # (2, 512)
    probs = softmax(100 * img @ txt.T)    # open_clip's zero-shot convention (softmax: scipy.special's or
                                          # make_jax.evaluate.metrics.softmax)

Every `encode_*` runs one jitted function at a fixed batch size; the last partial batch is padded (zeros, which
are discarded) so any number of inputs costs no recompilation. Results are numpy float32 arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from PIL import Image

from make_jax import preprocess as _pp
from make_jax.models.clip import CLIP
from make_jax.models.config import ModelConfig


class Encoder:
    """A loaded CLIP with batched, jitted, L2-normalised encoders.

    `batch_size` images (and `text_batch_size` texts, default 4×batch_size) go through the model per call of the
    jitted function. `.model` is the NNX module, `.config` its `ModelConfig`, `.logit_scale` the learned log scale
    (logits = exp(logit_scale) · cosine, as open_clip's `model.logit_scale`). The jitted encoders use the
    parameters the model held when the Encoder was built.
    """

    def __init__(self, model: CLIP, *, batch_size: int = 32, text_batch_size: int | None = None,
                 preprocess_cfg: dict | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.model = model
        self.config: ModelConfig = model.config
        self.batch_size = int(batch_size)
        self.text_batch_size = int(text_batch_size or 4 * batch_size)
        pp = dict(preprocess_cfg or {})
        self.mean = tuple(pp.get("mean", _pp.CLIP_MEAN))
        self.std = tuple(pp.get("std", _pp.CLIP_STD))
        # open_clip's eval modes, as the checkpoint's preprocess_cfg asks (see make_jax.preprocess).
        self.interpolation = pp.get("interpolation", "bicubic")
        self.resize_mode = pp.get("resize_mode", "shortest")
        self.fill_color = int(pp.get("fill_color", 0))
        _pp.check_preprocess_cfg(self.interpolation, self.resize_mode)
        self._graphdef, self._state = nnx.split(model)
        graphdef = self._graphdef
        # How often each function was traced (= compiled): once per Encoder, whatever the input sizes.
        self.trace_counts = {"image": 0, "patches": 0, "image_and_patches": 0, "text": 0}
        counts = self.trace_counts

        def image_fn(state, x):
            counts["image"] += 1
            return nnx.merge(graphdef, state).encode_image(x)

        def patches_fn(state, x):
            counts["patches"] += 1
            return nnx.merge(graphdef, state).encode_image_and_patches(x).patches

        def both_fn(state, x):
            counts["image_and_patches"] += 1
            out = nnx.merge(graphdef, state).encode_image_and_patches(x)
            return out.embedding, out.patches

        def text_fn(state, ids):
            counts["text"] += 1
            return nnx.merge(graphdef, state).encode_text(ids)

        self._image_fn = jax.jit(image_fn)
        self._patches_fn = jax.jit(patches_fn)
        self._both_fn = jax.jit(both_fn)
        self._text_fn = jax.jit(text_fn)

    def set_params(self, params: dict) -> None:
        """Use new parameter values of the same structure (a pure dict, e.g. a training state's params) without
        recompiling: the jitted encoders take the state as an argument."""
        state = nnx.state(self.model, nnx.Param)
        nnx.replace_by_pure_dict(state, params)
        nnx.update(self.model, state)
        self._graphdef, self._state = nnx.split(self.model)

    # ---- properties -----------------------------------------------------------------------------------------
    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale[...])

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    # ---- inputs ---------------------------------------------------------------------------------------------
    def tokenize(self, texts: str | Sequence[str]) -> np.ndarray:
        """Texts → (N, context_length) int32 ids, by the tokenizer the model's config names (open_clip's
        SimpleTokenizer: SOT 49406, EOT 49407, pad 0; or BERT's WordPiece)."""
        from make_jax.tokenizer import text_tokenizer

        return text_tokenizer(self.config.text)(texts, context_length=self.config.text.context_length)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """PIL image → (S, S, 3) float32, open_clip's eval transform with the checkpoint's preprocess_cfg
        (mean, std, interpolation, resize_mode, fill_color; see make_jax.preprocess)."""
        return _pp.preprocess(image, self.image_size, self.mean, self.std, self.interpolation, self.resize_mode,
                              self.fill_color)

    def _images(self, images: Any) -> np.ndarray:
        s = self.image_size
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, (list, tuple)):
            arrays = [self.preprocess(im) if isinstance(im, Image.Image) else np.asarray(im, np.float32)
                      for im in images]
            x = np.stack(arrays) if arrays else np.zeros((0, s, s, 3), np.float32)
        else:
            x = np.asarray(images, np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1:] != (s, s, 3):
            hint = " (channels last: NHWC, not NCHW)" if x.ndim == 4 and x.shape[1] == 3 else ""
            raise ValueError(f"images must be PIL images or preprocessed arrays of shape (N, {s}, {s}, 3){hint}; "
                             f"got {x.shape}")
        return x

    def _ids(self, texts_or_ids: Any) -> np.ndarray:
        ctx = self.config.text.context_length
        if isinstance(texts_or_ids, str):
            texts_or_ids = [texts_or_ids]
        if isinstance(texts_or_ids, (list, tuple)) and all(isinstance(t, str) for t in texts_or_ids):
            ids = self.tokenize(list(texts_or_ids)) if texts_or_ids else np.zeros((0, ctx), np.int32)
        else:
            ids = np.asarray(texts_or_ids)
            if ids.dtype.kind not in "iu":
                raise TypeError(f"encode_text expects a str, a list of str or an int array of token ids; got "
                                f"dtype {ids.dtype}")
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] > ctx:
            raise ValueError(f"token ids must be (M, L) with L ≤ {ctx}; got {ids.shape}")
        ids = ids.astype(np.int32)
        if ids.shape[1] < ctx:  # padding past the text never changes it (causal EOT pooling, or a masked BERT)
            ids = np.pad(ids, ((0, 0), (0, ctx - ids.shape[1])), constant_values=self.config.text.pad_id)
        return ids

    # ---- batched execution ----------------------------------------------------------------------------------
    def _run(self, fn, x: np.ndarray, batch: int, empty_shapes):
        n = x.shape[0]
        if n == 0:
            outs = tuple(np.zeros((0, *s), np.float32) for s in empty_shapes)
            return outs if len(outs) > 1 else outs[0]
        pending = []
        for start in range(0, n, batch):
            chunk = x[start:start + batch]
            m = chunk.shape[0]
            if m < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - m, *chunk.shape[1:]), chunk.dtype)])
            pending.append((fn(self._state, chunk), m))  # dispatched asynchronously
        results = [jax.tree.map(lambda a, m=m: np.asarray(a)[:m], out) for out, m in pending]
        if isinstance(results[0], tuple):
            return tuple(np.concatenate(parts) for parts in zip(*results))
        return np.concatenate(results)

    def encode_image(self, images: Any) -> np.ndarray:
        """PIL image(s) or preprocessed (N, S, S, 3) array → (N, E) L2-normalised float32."""
        return self._run(self._image_fn, self._images(images), self.batch_size, [(self.embed_dim,)])

    def encode_patches(self, images: Any) -> np.ndarray:
        """→ (N, P, E) L2-normalised patch embeddings (every patch token through ln_post and proj)."""
        p = self.config.vision.num_patches
        return self._run(self._patches_fn, self._images(images), self.batch_size, [(p, self.embed_dim)])

    def encode_image_and_patches(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """→ ((N, E), (N, P, E)) from one pass of the image tower."""
        p = self.config.vision.num_patches
        return self._run(self._both_fn, self._images(images), self.batch_size,
                         [(self.embed_dim,), (p, self.embed_dim)])

    def encode_text(self, texts_or_ids: Any) -> np.ndarray:
        """str, list of str (tokenized here) or int ids (M, L ≤ context_length) → (M, E) L2-normalised float32."""
        return self._run(self._text_fn, self._ids(texts_or_ids), self.text_batch_size, [(self.embed_dim,)])

    def __repr__(self) -> str:
        v, t = self.config.vision, self.config.text
        return (f"Encoder(ViT {v.image_size}/{v.patch_size} w{v.width}x{v.layers}, text w{t.width}x{t.layers}, "
                f"embed {self.embed_dim}, {self.config.activation}, dtype {self.config.dtype}, "
                f"batch_size {self.batch_size})")


def load(path: str | Path, dtype: str | None = None, batch_size: int = 32,
         text_batch_size: int | None = None, *, activation: str | None = None, cache: bool = True) -> Encoder:
    """Opens a model by path or name (see make_jax.checkpoint.hub): a make_jax checkpoint directory
    (model_config.json + params/, as `python -m make_jax.convert` writes or training exports), an open_clip or
    Hugging Face CLIP directory or state-dict file (converted in memory), `hf-hub:ORG/NAME`, or a registry
    name (`make`, `dermlip-vit-b16`, `openai-vit-b16`). `dtype` overrides the compute dtype (e.g. "bfloat16";
    parameters stay float32); `activation` the source's activation; `cache=False` skips the converted-model
    cache of hub models. See `Encoder` for the batch sizes."""
    from make_jax.checkpoint import hub

    model, pp = hub.load_model(path, dtype=dtype, activation=activation, cache=cache)
    return Encoder(model, batch_size=batch_size, text_batch_size=text_batch_size, preprocess_cfg=pp)

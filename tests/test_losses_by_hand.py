"""Paper-mode loss (docs/objectives.md §2) on batches small enough to work out by hand: 2 images, 4 texts, D = 2.

Each case pins one choice of the paper-mode rules with a value derived in the comments, not by a reference
implementation that could change together with the code. logit_scale = 0 (s = 1) keeps the logits equal to
the cosines. Unit vectors used: a = (1, 0), b = (0, 1), c = (0.6, 0.8), d = (0.8, 0.6).
"""

import math

import jax.numpy as jnp
import numpy as np

from make_jax.losses import LossConfig, LossInputs, make_loss

A, B, C, D = (1.0, 0.0), (0.0, 1.0), (0.6, 0.8), (0.8, 0.6)
NEG_A, NEG_B = (-1.0, 0.0), (0.0, -1.0)
E = math.e


def _loss(images, patches, texts, owner, slot, config):
    loss, terms = make_loss(LossInputs(jnp.asarray(images, jnp.float32),
                                       None if patches is None else jnp.asarray(patches, jnp.float32),
                                       jnp.asarray(texts, jnp.float32), jnp.asarray(owner, jnp.int32),
                                       jnp.asarray(slot, jnp.int32), jnp.ones(len(owner), bool), 0.0), config)
    return float(loss), {k: float(v) for k, v in terms.items()}


def test_dkw_ratio_weights_are_one_when_the_largest_similarity_is_not_positive():
    # Image 0 (e0 = a): disease text r0 = a, subtexts r1 = -a and r2 = b.  Image 1 (e1 = b): raw caption r3 = b.
    # DKW for image 0: g(r1) = a.-a = -1, g(r2) = a.b = 0, max g = 0 <= 0  ->  w(r1) = w(r2) = 1 (the rule under
    # test; g / max g is undefined there).  Image 1 has no disease text -> its weights are 1.  So every w = 1.
    #
    # Logits e_i . t_r (s = 1):      r0   r1   r2   r3
    #                          e0:    1   -1    0    0
    #                          e1:    0    0    1    1
    # image->text, softmax over the 4 valid texts:
    #   lse0 = log(e + 1/e + 1 + 1),  lse1 = log(1 + 1 + e + e)
    #   l(r0) = lse0 - 1, l(r1) = lse0 + 1, l(r2) = lse0 - 0, l(r3) = lse1 - 1
    #   i2t = (3 lse0 + lse1 - 1) / 4                                                   (all weights 1)
    # text->image, softmax over the 2 images:
    #   r0: log(e + 1) - 1,   r1 (-a): log(1/e + 1) + 1,   r2 (b, owner 0): log(1 + e) - 0,   r3: log(1 + e) - 1
    #   t2i = (3 log(1 + e) + log(1 + 1/e) - 1) / 4
    lse0, lse1 = math.log(E + 1 / E + 2), math.log(2 + 2 * E)
    i2t = (3 * lse0 + lse1 - 1) / 4
    t2i = (3 * math.log(1 + E) + math.log(1 + 1 / E) - 1) / 4
    config = LossConfig(positives="all", slra=False, dkw=True, dkw_norm="ratio")
    loss, terms = _loss([A, B], None, [A, NEG_A, B, B], [0, 0, 0, 1], [1, 3, 4, 0], config)
    np.testing.assert_allclose([terms["i2t"], terms["t2i"], loss], [i2t, t2i, 0.5 * (i2t + t2i)], rtol=1e-6)
    assert terms["dkw_mean"] == 1.0 and terms["dkw_std"] == 0.0


def test_dkw_ratio_weights_clamp_negative_similarities_to_zero():
    # Image 0's disease text is r0 = b, subtexts r1 = -b and r2 = b:  g(r1) = -1, g(r2) = 1, max g = 1 > 0
    #   w(r1) = max(-1, 0) / 1 = 0,  w(r2) = 1 / 1 = 1.  Image 1 (e1 = b): raw caption r3 = b.
    # Logits e_i . t_r (s = 1):      r0   r1   r2   r3
    #                          e0:    0    0    0    0
    #                          e1:    1   -1    1    1
    #   lse0 = log 4,  lse1 = log(3e + 1/e)
    #   i2t = [1 (lse0 - 0) + 0 (lse0 - 0) + 1 (lse0 - 0) + 1 (lse1 - 1)] / (1 + 0 + 1 + 1) = (2 lse0 + lse1 - 1) / 3
    #   t2i: r0 (b, owner 0): log(1 + e) - 0;  r1 (-b, owner 0): log(1 + 1/e) - 0;  r2: log(1 + e);  r3: log(1 + e) - 1
    #   t2i = (3 log(1 + e) + log(1 + 1/e) - 1) / 4
    lse0, lse1 = math.log(4), math.log(3 * E + 1 / E)
    i2t = (2 * lse0 + lse1 - 1) / 3
    t2i = (3 * math.log(1 + E) + math.log(1 + 1 / E) - 1) / 4
    config = LossConfig(positives="all", slra=False, dkw=True, dkw_norm="ratio")
    loss, terms = _loss([A, B], None, [B, NEG_B, B, B], [0, 0, 0, 1], [1, 3, 4, 0], config)
    np.testing.assert_allclose([terms["i2t"], terms["t2i"], loss], [i2t, t2i, 0.5 * (i2t + t2i)], rtol=1e-6)
    # Weights over the two subtext rows: 0 and 1 -> mean 0.5, population std 0.5.
    np.testing.assert_allclose([terms["dkw_mean"], terms["dkw_std"]], [0.5, 0.5], rtol=1e-6)


SLRA = LossConfig(positives="all", slra=True, dkw=False, slra_lambda=0.7, eps=0.0)


def test_an_image_without_raw_caption_is_dropped_from_slra():
    # Image 0: raw r0 = a, subtext r1 = d; patches (a, b) -> z = (a.a, b.a) = (1, 0), e^k_0 = (1 a + 0 b) / 1 = a.
    # Image 1: no raw caption (its texts: disease r2 = b, subtext r3 = c) -> no e^k_1: image 1 is neither a target
    # nor a negative of L_slra, so r3 has no term and r1's softmax runs over image 0 alone:
    #   l_slra(r1) = log(exp(d.a)) - d.a = 0   ->   L_slra = 0 exactly.
    # (Keeping image 1 with e^k = 0 would give log(e^0.8 + 1) - 0.8 = 0.371 for r1.)
    loss, terms = _loss([A, B], [[A, B], [A, B]], [A, D, B, C], [0, 0, 1, 1], [0, 3, 1, 3], SLRA)
    assert abs(terms["slra"]) < 1e-6
    np.testing.assert_allclose(loss, terms["mkcl"], rtol=1e-6)


def test_an_image_whose_patches_all_score_below_zero_keeps_a_zero_knowledge_embedding():
    # sigma = 0.  Image 0: raw r0 = a, patches (a, b): z = (1, 0), e^k_0 = a.  Subtext r1 = d.
    # Image 1: raw r2 = c, patches (-a, -b): z = (-0.6, -0.8), both < 0 -> z = (0, 0), sum z = 0 -> e^k_1 = 0.
    # Image 1 stays in L_slra with logit 0 (target and negative).  Subtext r3 = b owned by image 1.
    #   l(r1) = log(exp(d.a) + exp(d.0)) - d.a = log(e^0.8 + 1) - 0.8
    #   l(r3) = log(exp(b.a) + exp(b.0)) - b.0 = log(1 + 1) - 0 = log 2
    #   L_slra = (l(r1) + l(r3)) / 2;  total = L_mkcl + 0.7 L_slra
    slra = (math.log(math.exp(0.8) + 1) - 0.8 + math.log(2)) / 2
    loss, terms = _loss([A, B], [[A, B], [NEG_A, NEG_B]], [A, D, C, B], [0, 0, 1, 1], [0, 3, 0, 3], SLRA)
    np.testing.assert_allclose(terms["slra"], slra, rtol=1e-6)
    np.testing.assert_allclose(loss, terms["mkcl"] + 0.7 * slra, rtol=1e-6)


def test_patches_below_a_positive_sigma_are_cut_and_an_image_with_none_left_keeps_a_zero_embedding():
    # sigma = 0.9.  Image 0: raw r0 = a, patches (a, d): z = (1, 0.8) -> (1, 0) after the threshold (0.8 < 0.9),
    # so e^k_0 = a (d's patch no longer counts; without the cut e^k_0 would be (1.64, 0.48) / |.|).
    # Image 1: raw r2 = c, patches (a, b): z = (0.6, 0.8), both positive but < 0.9 -> e^k_1 = 0, kept.
    # Subtexts: r1 = b (image 0), r3 = d (image 1).
    #   l(r1) = log(exp(b.a) + exp(0)) - b.a = log 2
    #   l(r3) = log(exp(d.a) + exp(0)) - 0   = log(e^0.8 + 1)
    slra = (math.log(2) + math.log(math.exp(0.8) + 1)) / 2
    config = LossConfig(positives="all", slra=True, dkw=False, slra_lambda=0.7, eps=0.0, sigma=0.9)
    loss, terms = _loss([A, B], [[A, D], [A, B]], [A, B, C, D], [0, 0, 1, 1], [0, 3, 0, 3], config)
    np.testing.assert_allclose(terms["slra"], slra, rtol=1e-6)
    np.testing.assert_allclose(loss, terms["mkcl"] + 0.7 * slra, rtol=1e-6)

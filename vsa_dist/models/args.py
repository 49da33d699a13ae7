"""The two models' settings, declared once (the standard library only, no torch). Each model's ``*Args`` is what it is
built from and what its checkpoint stores; the settings part of it (``*Settings``) is also the part of the stage's
config a user chooses: ``AlignConfig`` and ``MRNNConfig`` inherit these fields, their defaults, help and ranges, so a
default changed here changes the model every command builds, and no second declaration can disagree with it."""

from __future__ import annotations

from dataclasses import dataclass

from vsa_dist.options import option

# the CNNs whose blocks can train with the alignment model (models/encoder.py; their code is the one package the suite
# depends on)
TRAINABLE_BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")


@dataclass(kw_only=True)
class AlignmentSettings:
    """The alignment model's choices (section 3.1, and what goes beyond it: models/alignment.py)."""

    embed_dim: int = option(1000, "multimodal space h (the paper: 1000 to 1600)", range="[1, inf)")
    word_dim: int = option(300, "word vector size (the paper's word2vec vectors were 300-d)", range="[1, inf)")
    dropout: float = option(0.1, "dropout on the non-recurrent layers; the paper gives no rate: 0.1 chosen on dev "
                                 "over 0.5 (docs/alignment.md)", range="[0, 1)")
    score_norm: str = option("sum", "sum over words (paper) or mean", choices=("sum", "mean"))
    hardest_negative: bool = option(False, "hinge on the hardest negative only (VSE++)")
    margin: float = option(1.0, "the hinge's margin (paper: 1; about 0.2 with cosine scores)", range="(0, inf)")
    word_rnn: str = option("relu", "relu (the paper's BRNN) or gru (a bidirectional GRU)", choices=("relu", "gru"))
    cosine: bool = option(False, "region and word vectors at unit length: scores are cosines")
    local_weight: float = option(1.0, "weight of the paper's region-word term in the score", range="[0, inf)")
    global_weight: float = option(0.0, "weight of a global term, cos(whole image's v_0, mean word vector), beside it",
                                  range="[0, inf)")
    global_pooling: str = option("mean", "the global term's vectors: mean (v_0 and the mean word vector) or gpo "
                                         "(learned GPO pooling over all the region vectors and over the words)",
                                  choices=("mean", "gpo"))
    local_pooling: str = option("max", "each word's region in the region-word term: max (the paper's best region) "
                                       "or attention (SCAN's text-to-image attention; needs cosine)",
                                 choices=("max", "attention"))
    regions: bool = option(True, "score the regions beside the whole image; false: the whole image alone (the "
                                 "ablation in docs/alignment.md: with the paper's score every word then takes v_0)")


@dataclass(kw_only=True)
class AlignmentArgs(AlignmentSettings):
    """Everything ``AlignmentModel`` is built from: the settings, and what the data decides."""

    vocab_size: int            # the feature folder's words + PAD, UNK
    feature_dim: int = 1280    # the CNN's vector size
    l2_features: bool = True   # unit-length CNN features in: initial scores start near the margin, not in the
    #                            hundreds, so the hinge does not drive every ReLU dead before anything is learned
    # the CNN the model carries (models/encoder.py), run from trunk_block on; "": none, it reads a frozen CNN's vectors
    encoder: str = ""
    trunk_block: int = 0


def reads_regions(settings: AlignmentSettings) -> bool:
    """Whether the image–sentence score reads the R region rows, or only the whole image's (``settings``: the
    model's args or the stage's config, which share these fields)."""
    return bool(settings.regions and (settings.local_weight or settings.global_pooling == "gpo"))


@dataclass(kw_only=True)
class MRNNSettings:
    """The generator's choices (section 3.2, and what goes beyond it: models/mrnn.py)."""

    cell: str = option("rnn", "rnn (the paper's ReLU RNN) or lstm", choices=("rnn", "lstm"))
    hidden: int = option(512, "hidden units", range="[1, inf)")
    word_dim: int = option(512, "word vector size", range="[1, inf)")
    dropout: float = option(0.25, "dropout on the non-recurrent layers (word vectors, image vector, the output "
                                  "layer's input); the paper gives no rate: 0.25 with Adam chosen on dev "
                                  "(docs/generation.md, 'The paper preset, setting by setting')", range="[0, 1)")
    feature_norm: str = option("rms", "image features at unit length (unit) or unit RMS per component (rms: each "
                                      "component ~1, the scale a Linear layer's default init expects; lower dev "
                                      "perplexity)", choices=("unit", "rms"))
    attention: bool = option(False, "lstm: attend over the whole image and its regions at every word (beyond the "
                                    "paper)")


@dataclass(kw_only=True)
class MRNNArgs(MRNNSettings):
    """Everything ``MRNN`` is built from: the settings, and what the data decides."""

    vocab_size: int            # PAD, UNK, the feature folder's words, END
    feature_dim: int = 1280    # the CNN's vector size

    @property
    def state_size(self) -> int:
        """Tensors in the recurrent state: h (rnn); h, c (lstm); plus the attention memory's keys and values."""
        return (1 if self.cell == "rnn" else 2) + (2 if self.attention else 0)

    @property
    def end(self) -> int:
        return self.vocab_size - 1


def settings_of(cfg: object, settings: type) -> dict:
    """The fields of ``settings`` (a ``*Settings`` class) as ``cfg`` holds them: a stage config → its model's args."""
    return {name: getattr(cfg, name) for name in settings.__dataclass_fields__}

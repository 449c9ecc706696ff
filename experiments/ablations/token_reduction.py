"""Paper Table 11: 144 visual tokens by the LDP (336 px, stride-2 block) against a reduced input resolution
(RIR: 168 px, 12x12 patches, the MLP projector). MobileVLM 1.7B.

  make sweep EXP=experiments/ablations/token_reduction.py:demo
"""
from experiments.ablations.common import SMALL, chain, scale, trial


def sweep(arg=None):
    size, args = scale(arg)
    rir = {"model.projector": "mlp2x_gelu", "model.vision_overrides": {"image_size": 168}}
    return [trial("ldp", chain(size, args), paper=("table11", "ldp"), baseline=True),
            trial("rir", chain(size, args, vlm=rir), paper=("table11", "rir"))]

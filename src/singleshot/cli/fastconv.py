"""The ``--fast / --no-fast`` and ``--winograd / --no-winograd`` options shared by ``detect`` and
``eval``; `modelfile.open_model` passes them to `singleshot.SSD.optimize_for_inference`."""

from __future__ import annotations

import argparse


def add_winograd_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--winograd",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="on the CPU, run the backbone's 3x3 convolutions with 64+ channels (VGG16's conv1_2 ... "
        "conv5_3) by Winograd's F(4x4, 3x3) "
        "(C kernels built once with the machine's compiler, with a one-line note, or ahead of time by "
        "`singleshot build-kernels`; 1.6-1.9x torchvision's SSD300 end to end on 2-core "
        "AVX-512 CPUs, equal to the direct convolution within float32 rounding). Default: on for "
        "--device cpu, falling back to the direct convolution with a note when no C compiler is "
        "found; --winograd makes that an error, --no-winograd turns it off",
    )


def add_fast_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run an inference-only copy of the model: BatchNorm folded into the convolutions and "
        "squeeze-excitation convolutions as matrix products (singleshot.fastpath; equal to the "
        "model within float32 rounding, the checkpoint untouched; for SSDLite320 on a "
        "2-core AVX-512 CPU see benchmarks/README.md). Default: on for --device cpu in float32; "
        "--no-fast runs the model as loaded",
    )

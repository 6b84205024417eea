"""What the benchmark scripts share (bench_train.py, bench_official.py, sampling_floor.py): the hardware
rates their floors are computed against. A script imports shared values from here, not from another
script."""

# Datasheet peaks (SXM parts), the floors' rates: dense bf16 tensor-core TFLOP/s, and H100 HBM3 bandwidth.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
H100_BYTES_PER_S = 3.35e12

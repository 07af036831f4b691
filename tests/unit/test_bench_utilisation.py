"""The GPU-utilisation benchmark's reading of nvidia-smi output (hand-computed)."""
import pytest

from raybench.bench.sweep_utilisation import parse_samples, summarise


def test_nvidia_smi_lines_become_samples_and_a_summary():
    lines = ["0, 90, 1000\n", "1, 70, 3000\n", "0, [N/A], 5\n", "garbage\n", "0, 100, 2000\n"]
    samples = parse_samples(lines)
    assert [(s.gpu, s.utilisation, s.memory_mib) for s in samples] == [(0, 90, 1000), (1, 70, 3000), (0, 100, 2000)]
    s = summarise(samples)
    assert s.samples == 3
    assert s.mean_utilisation == pytest.approx(260 / 3)
    assert s.busy_fraction == pytest.approx(2 / 3)  # 90 and 100 reach 80 %, 70 does not
    assert s.peak_memory_mib == 3000
    assert summarise([]) is None

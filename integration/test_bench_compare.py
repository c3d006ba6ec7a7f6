"""The boot comparison reads the table bench_boot.py prints (no VM: the two scripts' formats agree)."""

from __future__ import annotations

from bench_boot import Figures, table
from bench_boot_compare import parse_table, summary


def test_the_comparison_reads_the_benchmark_table_and_counts_the_faster_rounds() -> None:
    columns = [Figures("cold 1", {"kernel start → OS init": 5.12, "stage mount": 0.25, "bytes fetched": 7175}),
               Figures("warm 1", {"kernel start → OS init": 4.5, "stage mount": 0.2, "bytes fetched": 914}),
               Figures("native 1", {"stage mount": 0.01})]
    parsed = parse_table(table(columns))
    assert parsed["cold 1"] == {"kernel start → OS init": 5.12, "stage mount": 0.25, "bytes fetched": 7175}
    assert parsed["warm 1"]["kernel start → OS init"] == 4.5 and "bytes fetched" in parsed["warm 1"]
    assert parsed["native 1"] == {"stage mount": 0.01}  # its "-" cells are left out

    def one(cold: float, warm: float, mount: float) -> dict[str, dict[str, float]]:
        return {"cold": {"kernel start → OS init": cold, "stage mount": mount}, "warm": {"kernel start → OS init": warm}}

    rounds = [{"base": one(5.0, 4.4, 0.3), "head": one(4.8, 4.5, 0.2)},
              {"base": one(5.2, 4.2, 0.3), "head": one(5.0, 4.0, 0.2)},
              {"base": one(5.1, 4.3, 0.3), "head": one(5.3, 4.1, 0.2)}]
    lines = summary("aaa", "bbb", rounds).splitlines()
    assert lines[0] == "| figure, 3 rounds | aaa | bbb | bbb faster in |"
    assert "| cold: kernel start → OS init | 5.100 | 5.033 | 2 of 3 |" in lines
    assert "| warm: kernel start → OS init | 4.300 | 4.200 | 2 of 3 |" in lines
    assert "| cold: stage mount | 0.300 | 0.200 |  |" in lines

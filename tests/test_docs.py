"""The docs a user has: no citations of files outside the repository, every experiment ± defined."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["README.md", *[str(p.relative_to(ROOT)) for d in ("docs", "src", "examples", "benchmarks")
                          for p in (ROOT / d).rglob("*") if p.suffix in (".md", ".py", ".sh", ".yaml")]]  # fmt: skip


def test_nothing_cites_the_spec_users_do_not_have():
    citing = [name for name in SHIPPED if "SPEC.md" in (ROOT / name).read_text(encoding="utf-8")]
    assert citing == [], f"cite docs/objectives.md instead: {citing}"


def test_every_plus_minus_in_the_results_says_what_it_is():
    text = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    for section in text.split("\n## ")[1:]:
        section = " ".join(section.split())
        if "±" in section:
            assert "confidence interval" in section and "seeds" in section, section[:80]

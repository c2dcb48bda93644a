"""The README's table of the spec language agrees with the functions lstmc accepts
(the op registry plus the composite functions): none missing, none invented."""
import re

from conftest import ROOT

from lstmc.frontend.functions import all_functions


def _language_table() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The spec language"):]
    section = section[:section.index("\n##", 1)]  # up to the next heading
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [row.split(" | ")[0] for row in rows]  # the construct column


def _documented_functions() -> set[str]:
    names = set()
    for construct in _language_table():
        for span in re.findall(r"`([^`]*)`", construct):
            if re.fullmatch(r"[a-z_]+( [a-z_]+)+", span):  # `sigmoid tanh relu ...`
                names.update(span.split())
            else:
                names.update(re.findall(r"^([a-z_]+)\(", span))
    return names


def test_every_function_is_in_the_readme_table_and_nothing_else():
    documented = _documented_functions()
    known = set(all_functions())
    assert known - documented == set(), "functions missing from README's table"
    assert documented - known == set(), "README's table names functions lstmc lacks"

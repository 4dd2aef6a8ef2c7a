"""The README's configuration reference is the key table's own output
(`holmes check --reference`). Run with --write to refresh the README."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import SRC, check, finish, tool  # noqa: E402

BEGIN = "<!-- BEGIN REFERENCE -->\n"
END = "<!-- END REFERENCE -->\n"


def main():
    ref = subprocess.run([tool(), "check", "--reference"], capture_output=True, text=True,
                         check=True).stdout
    readme_path = os.path.join(SRC, "README.md")
    with open(readme_path) as f:
        readme = f.read()
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    current = rest.split(END, 1)[0]
    if "--write" in sys.argv:
        with open(readme_path, "w") as f:
            f.write(head + BEGIN + ref + END + tail)
        print("README.md reference refreshed")
        return
    check(current == ref, "README.md's configuration reference differs from `holmes check "
          "--reference`; run: HOLMES_BUILD=build/release python3 tests/integration/test_readme.py --write")
    finish()


if __name__ == "__main__":
    main()

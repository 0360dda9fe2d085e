"""`python -m datalayers.sqlalchemy ddl [DIALECT] [--write]`: print the schema's DDL, or write
`sql/{sqlite,postgresql,mysql}.sql` (what `make ddl` runs)."""

import sys
from pathlib import Path

from .schema import DIALECTS, ddl


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "ddl":
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if "--write" in argv:
        out = Path(__file__).resolve().parents[2] / "sql"
        out.mkdir(exist_ok=True)
        for name in DIALECTS:
            (out / f"{name}.sql").write_text(ddl(name))
            print(f"wrote {out / (name + '.sql')}")
        return 0
    dialects = [a for a in argv[1:] if not a.startswith("-")]
    print(ddl(dialects[0] if dialects else "postgresql"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Write the hostile graph cases of tests/hostile_graphs.py to a folder, for manual runs:

    python scripts/make_hostile_inputs.py /tmp/hostile
    for d in /tmp/hostile/*/; do timeout 60 ckptdoc audit "$d"; echo "$d $?"; done
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.hostile_graphs import (  # noqa: E402
    GRAPHS,
    write_case,
    write_deep_metadata_case,
    write_object_chain_case,
)


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile-inputs")
    for name in GRAPHS:
        prefix = write_case(folder, name)
        print(f"{prefix}.meta: {Path(f'{prefix}.meta').stat().st_size:,} bytes")
    print(write_object_chain_case(folder))
    print(write_deep_metadata_case(folder))


if __name__ == "__main__":
    main()

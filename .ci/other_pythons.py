"""Print the versions given as arguments, less the one python3 is (make test covers it)."""

import sys

mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
print(" ".join(version for version in sys.argv[1:] if version != mine))

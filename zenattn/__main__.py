"""``python -m zenattn``: print what is built and usable here."""

import json

import zenattn

print(json.dumps(zenattn.info(), indent=2))

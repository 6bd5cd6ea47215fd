"""``python -m diffscape.settings > docs/settings.md``."""

import sys

from diffscape.settings.docs import settings_markdown

sys.stdout.write(settings_markdown())

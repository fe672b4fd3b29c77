"""``slipway`` as a next release of the operator would be: one that renders pods differently.

Started by tests/cluster/test_operator_upgrade.py in place of ``python -m slipway.cli``: the same
operator, with one more annotation on every pod template it renders, which changes every
revision hash.
"""

from __future__ import annotations

import sys
from typing import Any

from slipway import cli
from slipway.api import models
from slipway.logic import render

ANNOTATION = "slipway.dev/rendered-by"
_render_pod_template = render.render_pod_template


def render_pod_template(spec: models.ModelDeploymentSpec, meta: render.Meta) -> dict[str, Any]:
    template = _render_pod_template(spec, meta)
    template["metadata"]["annotations"][ANNOTATION] = "next-release"
    return template


def main() -> int:
    # Only in the operator process this module starts: imported by the tests, it changes nothing.
    render.render_pod_template = render_pod_template  # type: ignore[assignment]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())

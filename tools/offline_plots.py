"""Write ``.dvc/plots.html``: the page ``dvc plots show`` fills, with Vega, Vega-Lite and Vega-Embed inlined.

DVC's own page loads the three libraries from a CDN, so its interactive plots are blank offline. DVC takes
another page from ``plots.html_template`` in ``.dvc/config``: this one has the libraries' UMD builds (from
the npm registry, pinned by version and sha256 below) in its ``<head>`` and no ``{scripts}`` placeholder,
so DVC adds no CDN tags. Vega-Embed's "Open in Vega Editor" link (a website) is switched off.

    python tools/offline_plots.py            # needs npm and the npm registry once; the page is committed
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".dvc" / "plots.html"
# name, version, file in the package, sha256 of that file: the majors DVC's own page uses (vega 5,
# vega-lite 5, vega-embed 6), latest of each.
LIBRARIES = (
    ("vega", "5.33.1", "build/vega.min.js", "463f3db6a40b20e9747b4ed38f37ed0add508838f9141b1cf8366784b07b30c8"),
    ("vega-lite", "5.23.0", "build/vega-lite.min.js",
     "58c27358e26f2d319cf62f45bc17a4c8362f08645001df2ec8d341eee4097c7f"),
    ("vega-embed", "6.29.0", "build/vega-embed.min.js",
     "12d02acfbe3ec59ef9a37dd4822a2e04e2961b5bbb671bbe661d2221715b99da"),
)
# DVC's inline plot scripts call vegaEmbed(el, spec): the same, without the link to the online editor.
EMBED_DEFAULTS = """(function () {
  var embed = window.vegaEmbed;
  window.vegaEmbed = function (el, spec, opt) {
    return embed(el, spec, Object.assign({actions: {export: true, source: true, compiled: true, editor: false}}, opt));
  };
})();"""
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- {credits}: BSD-3-Clause, Copyright (c) University of Washington Interactive Data Lab;
         inlined by tools/offline_plots.py so that the page needs no network. -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def library_sources(folder: Path) -> list[tuple[str, str]]:
    """``npm pack`` each library into ``folder``; returns (``name@version``, the file's text), checked."""
    specs = [f"{name}@{version}" for name, version, _, _ in LIBRARIES]
    subprocess.run(["npm", "pack", "--silent", *specs], cwd=folder, check=True, capture_output=True)
    out = []
    for (name, version, member, sha), spec in zip(LIBRARIES, specs, strict=True):
        with tarfile.open(folder / f"{name}-{version}.tgz") as tar:
            data = tar.extractfile(f"package/{member}").read()  # type: ignore[union-attr]
        if hashlib.sha256(data).hexdigest() != sha:
            raise SystemExit(f"{spec} {member}: sha256 differs from the pinned one")
        out.append((spec, data.decode("utf-8")))
    return out


def page(sources: list[tuple[str, str]]) -> str:
    """The HTML template with the libraries inlined (``</script`` cannot occur in them: checked)."""
    for spec, text in sources:
        if "</script" in text.lower() or "{plot_divs}" in text or "{scripts}" in text:
            raise SystemExit(f"{spec}: cannot be inlined as it is")
    scripts = "\n".join(f"    <script>{text}</script>" for _, text in sources)
    scripts += f"\n    <script>{EMBED_DEFAULTS}</script>"
    return PAGE.format(credits=", ".join(spec for spec, _ in sources), scripts=scripts)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="vega-") as tmp:
        OUT.write_text(page(library_sources(Path(tmp))), encoding="utf-8")
    print(f"{OUT.relative_to(ROOT)}: {OUT.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

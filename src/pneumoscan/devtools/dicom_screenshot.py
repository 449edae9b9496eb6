"""The documentation's screenshots: pneumoscan's SR and SC in Orthanc Explorer, in real Chromium.

    python -m pneumoscan.devtools.dicom_screenshot --out docs/img

Starts a throwaway Orthanc with the routing script of docs/orthanc/ and a `pneumoscan dicom-node`,
uploads the example pneumonia film wrapped into a DX object (a made-up patient), waits for the
results and photographs three Orthanc Explorer pages with Debian's Chromium, headless, driven by
Playwright: the study (the film's series and pneumoscan's two), the SR's tags and the SC's preview.

Needs the [dicom] extra, Playwright (the [dev] extra), Debian's orthanc and chromium.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pneumoscan.devtools.dicom_harness import (
    NODE_AET,
    NodeProcess,
    OrthancProcess,
    chest_film,
    jpeg_pixels,
)
from pneumoscan.devtools.local import CHROMIUM, CHROMIUM_ARGS, free_port

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "pneumonia_person1946_bacteria_4874.jpeg"
ROUTING_SCRIPT = REPO / "docs" / "orthanc" / "route-to-pneumoscan.lua"


def take(out: Path, workdir: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    node_port = free_port()
    orthanc = OrthancProcess(
        workdir / "orthanc",
        modalities={"pneumoscan": (NODE_AET, node_port)},
        lua_scripts=[ROUTING_SCRIPT],
    ).start()
    node = NodeProcess(workdir / "spool", ["--send-to", orthanc.destination], port=node_port)
    try:
        node.start()
        film = chest_film(
            jpeg_pixels(EXAMPLE), patient_id="EXAMPLE-0001", patient_name="Example^Child"
        )
        film.StudyDescription = "XR CHEST PA"
        film.SeriesDescription = "PA"
        path = workdir / "film.dcm"
        film.save_as(path, enforce_file_format=True)
        orthanc.upload(path.read_bytes())
        instances = orthanc.wait_for(film.StudyInstanceUID, {"DX", "SR", "OT"})
        study = orthanc.rest(f"/series/{instances[0]['ParentSeries']}")["ParentStudy"]
        by_modality = {orthanc.modality_of(item): item["ID"] for item in instances}
        explorer = orthanc.url + "/app/explorer.html#"
        out.mkdir(parents=True, exist_ok=True)
        shots = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 620})
            page.goto(explorer + f"study?uuid={study}")
            page.wait_for_selector("text=pneumoscan heatmap")
            time.sleep(1.0)  # jQuery Mobile fades pages in
            shots.append(_save(page, out / "orthanc-study.png"))

            page.set_viewport_size({"width": 1100, "height": 1400})
            page.goto(explorer + f"instance?uuid={by_modality['SR']}")
            page.wait_for_selector("text=VerificationFlag")
            time.sleep(1.0)
            shots.append(_save(page, out / "orthanc-sr.png"))

            page.set_viewport_size({"width": 1100, "height": 760})
            page.goto(explorer + f"instance?uuid={by_modality['OT']}")
            page.wait_for_selector("text=Preview the instance")
            page.click("text=Preview the instance")  # scrolls the tags behind the lightbox
            page.wait_for_selector("#lbImage", state="visible")
            time.sleep(1.0)  # the lightbox fades in
            shots.append(_save(page, out / "orthanc-sc.png", colors=None))
            browser.close()
        return shots
    finally:
        node.stop()
        orthanc.stop(kill=True)


def _save(page, path: Path, colors: int | None = 128) -> Path:
    """The page's screenshot as a compact PNG: text pages in a palette, the heatmap in full colour."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    if colors is not None:
        image = image.quantize(colors=colors)
    image.save(path, optimize=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args(argv)
    from pneumoscan.dicom import quiet_libraries

    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="pneumoscan-shots-") as folder:
        for path in take(args.out, Path(folder)):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

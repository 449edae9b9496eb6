"""devtools: the developer harnesses, kept out of the product layers.

`dicom_harness` (throwaway Orthanc and dicom-node processes, a C-STORE sender, made-up films for
the DICOM tests), `dicom_bench` (`make bench-dicom`), `dicom_screenshot` (the documentation's
Orthanc screenshots), `loadtest` (`make bench-serve`) and `local` (a free loopback port and
Debian's Chromium, for all of them). They stand above serve and dicom, which never import them;
nothing here is needed to predict, serve or run the node.

May import: every layer below it (serve, dicom, research, runtime, core), and the services the
tests start (Debian's Orthanc, chromium). Only `cli` and the tests import it.
"""

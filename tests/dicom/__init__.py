"""DICOM tests: results, the node and a real Orthanc (a package, so its conftest stays its own)."""

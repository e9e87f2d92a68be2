"""Hospital integration: HL7 v2 MLLP listener, DICOM receiver, watch folder, durable queue."""

"""The DICOM side: SCP, store and index, de-identification, Query/Retrieve, SCU and outbox, synthetic SC writer."""

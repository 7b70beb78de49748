"""De-identification on ingest: the PS3.15 Annex E Basic Application Level Confidentiality Profile.

Why our own table and not a library (compared when this was written, 2025):

* ``dicom-anonymizer`` (Kitware, BSD) carries Table E.1-1 well, but replaces UIDs from an in-memory
  dictionary of random UIDs (not keyed: a re-send after a restart gets new UIDs and no longer
  deduplicates), has no retain options and writes no De-identification Method Code Sequence.
* ``dicognito`` (MIT) is deterministic with a seed and keeps studies grouped, but it is not driven by
  Table E.1-1 (it invents random names and addresses, shifts every date), has no retain options and
  no CID 7050 codes.
* ``deid`` (pydicom/deid, MIT) is a recipe engine; its default recipe is a small subset of the table and
  its UID handling is left to the caller.

What training needs is narrow (the profile, keyed consistent remapping, a few retain options, the method
codes), so this module is a compact table: :data:`ACTIONS` names each attribute of PS3.15 Table E.1-1
that can occur in a radiograph with its action code (Table E.1-1a: X remove, Z empty, D dummy, U new
UID, K keep, C clean), the retain options of PS3.15 E.3 change some actions, and four rules derived from
the profile cover what no table row names:

* every private attribute is removed (the Retain Safe Private Option is not used, PS3.15 E.3.10);
* every UI value that is not a class, transfer syntax or coding-scheme UID of the standard is remapped
  with :func:`service.dicom.uids.keyed_uid` (the profile's "U" for every instance UID, PS3.15 E.3.9
  for consistency: the same UID maps to the same new UID, keyed by the configured secret);
* every Person Name (PN) the table does not name is removed, as are curves (50xx) and overlays (60xx,
  whose data and comments can spell names over the image), and unknown public attributes;
* dates follow the Retain Longitudinal Temporal Information Option (PS3.15 E.3.6): with full dates,
  dates are kept; otherwise every DA/DT is shifted by a keyed number of days per patient, so intervals
  within a patient survive but calendar dates do not. Birth dates are always removed.

The patient is replaced by a pseudonym derived from the keyed hash of the original patient identity,
so one patient's studies stay together in the store; the result records PatientIdentityRemoved = YES,
De-identification Method and its Code Sequence (CID 7050) and Longitudinal Temporal Information
Modified (PS3.3 C.7.1.1, C.12.1). Same input bytes and same secret give the same output bytes, so a
re-sent instance is recognized as identical. Nothing here logs a value.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import io
import re
from dataclasses import dataclass
from typing import Iterable

from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from service.config import Config, DeidConfig
from service.dicom.uids import keyed_uid
from service.home import Home

# PS3.15 Table E.1-1: action of the Basic Profile for each attribute (keyword -> code). Attributes with
# a retain option appear here with their Basic Profile action; the options below change them.
_TABLE: dict[str, str] = {
    # Patient identity (the pseudonym replaces name and ID, see Deidentifier._pseudonymize)
    "PatientName": "Z", "PatientID": "Z", "IssuerOfPatientID": "X", "IssuerOfPatientIDQualifiersSequence": "X",
    "TypeOfPatientID": "X", "PatientBirthDate": "Z", "PatientBirthTime": "X",
    "PatientBirthDateInAlternativeCalendar": "X", "PatientDeathDateInAlternativeCalendar": "X",
    "PatientAlternativeCalendar": "X", "OtherPatientIDs": "X", "OtherPatientIDsSequence": "X",
    "OtherPatientNames": "X", "PatientBirthName": "X", "PatientMotherBirthName": "X", "PatientAddress": "X",
    "MilitaryRank": "X", "BranchOfService": "X", "MedicalRecordLocator": "X", "PatientTelephoneNumbers": "X",
    "PatientTelecomInformation": "X", "PatientReligiousPreference": "X", "PatientComments": "X",
    "AdditionalPatientHistory": "X", "Occupation": "X", "CountryOfResidence": "X", "RegionOfResidence": "X",
    "ResponsiblePerson": "X", "ResponsiblePersonRole": "X", "ResponsibleOrganization": "X",
    "PatientInsurancePlanCodeSequence": "X", "InsurancePlanIdentification": "X",
    "PatientPrimaryLanguageCodeSequence": "X", "MedicalAlerts": "X", "Allergies": "X", "LastMenstrualDate": "X",
    "SpecialNeeds": "X", "PatientState": "X", "PatientInstitutionResidence": "X",
    "ReferencedPatientSequence": "X", "ReferencedPatientAliasSequence": "X", "ReferencedPatientPhotoSequence": "X",
    # Patient characteristics (Retain Patient Characteristics Option keeps sex and a coarse age)
    "PatientSex": "Z", "PatientAge": "X", "PatientSize": "X", "PatientWeight": "X", "EthnicGroup": "X",
    "PatientSexNeutered": "X", "SmokingStatus": "X", "PregnancyStatus": "X",
    # Visit, order and procedure step
    "AccessionNumber": "Z", "IssuerOfAccessionNumberSequence": "X", "StudyID": "Z", "StudyIDIssuer": "X",
    "AdmissionID": "X", "AdmittingDiagnosesDescription": "X", "AdmittingDiagnosesCodeSequence": "X",
    "CurrentPatientLocation": "X", "RouteOfAdmissions": "X", "AdmittingDate": "X", "AdmittingTime": "X",
    "DischargeDiagnosisDescription": "X", "ServiceEpisodeID": "X", "ServiceEpisodeDescription": "X",
    "IssuerOfAdmissionIDSequence": "X", "IssuerOfServiceEpisodeIDSequence": "X", "VisitComments": "X",
    "ReasonForVisit": "X", "ReasonForVisitCodeSequence": "X", "ReasonForStudy": "X", "RequestingPhysician": "X",
    "RequestingPhysicianIdentificationSequence": "X", "RequestingService": "X",
    "RequestedProcedureDescription": "X", "RequestedProcedureID": "X", "RequestedProcedureComments": "X",
    "RequestedProcedureLocation": "X", "ReasonForTheRequestedProcedure": "X", "RequestAttributesSequence": "X",
    "ScheduledProcedureStepDescription": "X", "ScheduledProcedureStepID": "X",
    "ScheduledProcedureStepLocation": "X", "ScheduledPerformingPhysicianName": "X",
    "ScheduledStationAETitle": "X", "ScheduledStationName": "X", "ScheduledPatientInstitutionResidence": "X",
    "ScheduledHumanPerformersSequence": "X", "PerformedProcedureStepID": "X",
    "PerformedProcedureStepDescription": "X", "PerformedLocation": "X", "PerformedStationAETitle": "X",
    "PerformedStationName": "X", "PerformedStationNameCodeSequence": "X",
    "CommentsOnThePerformedProcedureStep": "X", "ReferencedPerformedProcedureStepSequence": "X",
    "ActualHumanPerformersSequence": "X", "HumanPerformerName": "X", "HumanPerformerOrganization": "X",
    "PlacerOrderNumberImagingServiceRequest": "Z", "FillerOrderNumberImagingServiceRequest": "Z",
    "PlacerOrderNumberProcedure": "X", "FillerOrderNumberProcedure": "X", "OrderEnteredBy": "X",
    "OrderEntererLocation": "X", "OrderCallbackPhoneNumber": "X", "OrderCallbackTelecomInformation": "X",
    "ImagingServiceRequestComments": "X", "ConfidentialityConstraintOnPatientDataDescription": "X",
    "PatientTransportArrangements": "X", "PreMedication": "X", "RequestedContrastAgent": "X",
    "SpecimenAccessionNumber": "X", "ReferencedStudySequence": "X", "StudyComments": "X",
    # People and organizations
    "ReferringPhysicianName": "Z", "ReferringPhysicianAddress": "X", "ReferringPhysicianTelephoneNumbers": "X",
    "ReferringPhysicianIdentificationSequence": "X", "ConsultingPhysicianName": "X",
    "ConsultingPhysicianIdentificationSequence": "X", "PhysiciansOfRecord": "X",
    "PhysiciansOfRecordIdentificationSequence": "X", "PerformingPhysicianName": "X",
    "PerformingPhysicianIdentificationSequence": "X", "NameOfPhysiciansReadingStudy": "X",
    "PhysiciansReadingStudyIdentificationSequence": "X", "OperatorsName": "X",
    "OperatorIdentificationSequence": "X", "NamesOfIntendedRecipientsOfResults": "X", "ReviewerName": "X",
    "InterpretationRecorder": "X", "InterpretationTranscriber": "X", "InterpretationAuthor": "X",
    "InterpretationApproverSequence": "X", "PhysicianApprovingInterpretation": "X", "ResultsIDIssuer": "X",
    "DistributionName": "X", "DistributionAddress": "X", "PersonName": "X", "PersonAddress": "X",
    "PersonTelephoneNumbers": "X", "PersonTelecomInformation": "X", "PersonIdentificationCodeSequence": "X",
    "AuthorObserverSequence": "X", "ParticipantSequence": "X", "ContentCreatorName": "Z",
    "ContentCreatorIdentificationCodeSequence": "X", "VerifyingObserverName": "X",
    "VerifyingObserverSequence": "X", "VerifyingOrganization": "X", "HangingProtocolCreator": "X",
    "InstitutionName": "X", "InstitutionAddress": "X", "InstitutionalDepartmentName": "X",
    "InstitutionCodeSequence": "X", "InstitutionalDepartmentTypeCodeSequence": "X",
    # Equipment (Retain Device Identity Option keeps these)
    "StationName": "X", "DeviceSerialNumber": "X", "DeviceUID": "U", "DeviceID": "X", "DetectorID": "X",
    "DetectorDescription": "X", "GantryID": "X", "PlateID": "X", "CassetteID": "X", "GeneratorID": "X",
    "DeviceDescription": "X", "DeviceLabel": "X", "UniqueDeviceIdentifier": "X", "SoftwareVersions": "X",
    "ModifyingDeviceID": "X", "ModifyingDeviceManufacturer": "X", "SecondaryCaptureDeviceID": "X",
    "SourceApplicationEntityTitle": "X", "StationAETitle": "X", "RetrieveAETitle": "X",
    # Free text and descriptors that can name people or places (no Clean Descriptors Option)
    "StudyDescription": "X", "SeriesDescription": "X", "ProtocolName": "X", "AcquisitionComments": "X",
    "AcquisitionDeviceProcessingDescription": "X", "ContrastBolusAgent": "X", "DerivationDescription": "X",
    "ImageComments": "X", "FrameComments": "X", "TextComments": "X", "IdentifyingComments": "X",
    "IconImageSequence": "X", "GraphicAnnotationSequence": "X", "ContentSequence": "X",
    "AcquisitionContextSequence": "X", "TimezoneOffsetFromUTC": "X", "StorageMediaFileSetID": "X",
    "ConsentForClinicalTrialUseSequence": "X",
    # Integrity and history of the original object: meaningless once it is changed
    "OriginalAttributesSequence": "X", "ModifiedAttributesSequence": "X", "DigitalSignaturesSequence": "X",
    "EncryptedAttributesSequence": "X", "MACParametersSequence": "X", "DataSetTrailingPadding": "X",
    # Clinical trial attributes
    "ClinicalTrialSponsorName": "X", "ClinicalTrialProtocolID": "X", "ClinicalTrialProtocolName": "X",
    "ClinicalTrialSiteID": "X", "ClinicalTrialSiteName": "X", "ClinicalTrialSubjectID": "X",
    "ClinicalTrialSubjectReadingID": "X", "ClinicalTrialTimePointID": "X",
    "ClinicalTrialTimePointDescription": "X", "ClinicalTrialCoordinatingCenterName": "X",
    "ClinicalTrialProtocolEthicsCommitteeName": "X", "ClinicalTrialProtocolEthicsCommitteeApprovalNumber": "X",
    "ClinicalTrialSeriesID": "X", "ClinicalTrialSeriesDescription": "X",
    # Instance UIDs (every other UID is remapped by the UI rule too; listed for the reader)
    "StudyInstanceUID": "U", "SeriesInstanceUID": "U", "SOPInstanceUID": "U", "FrameOfReferenceUID": "U",
    "InstanceCreatorUID": "U", "IrradiationEventUID": "U", "StorageMediaFileSetUID": "U",
}

# Attributes the training pipeline reads; none is in Table E.1-1, so the profile keeps them. Named here
# so that no rule added later removes them by accident (tests check it).
RETAINED_FOR_TRAINING = (
    "Modality", "BodyPartExamined", "ViewPosition", "Laterality", "ImageLaterality", "PixelSpacing",
    "ImagerPixelSpacing", "PatientOrientation", "PhotometricInterpretation", "BurnedInAnnotation",
)

_PATIENT_CHARACTERISTICS = ("PatientSex", "PatientAge")
_DEVICE_IDENTITY = (
    "StationName", "DeviceSerialNumber", "DeviceUID", "DeviceID", "DetectorID", "DetectorDescription",
    "GantryID", "PlateID", "CassetteID", "GeneratorID", "DeviceDescription", "DeviceLabel",
    "UniqueDeviceIdentifier", "SoftwareVersions", "ModifyingDeviceID", "ModifyingDeviceManufacturer",
    "SecondaryCaptureDeviceID",
)
_BIRTH = ("PatientBirthDate", "PatientBirthTime", "PatientBirthDateInAlternativeCalendar", "PatientDeathDateInAlternativeCalendar")

# UIDs that name a class, syntax or scheme, not an instance: they identify nobody and must survive.
_KEPT_UID_KEYWORD = re.compile(r"(ClassUID|TransferSyntaxUID|CodingSchemeUID|MappingResourceUID|ContextUID)$")
_STANDARD_UID_ROOT = "1.2.840.10008."

# PS3.16 CID 7050 De-identification Method, coding scheme DCM.
CODE_BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
CODE_RETAIN_FULL_DATES = ("113106", "Retain Longitudinal Temporal Information Full Dates Option")
CODE_RETAIN_MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
CODE_RETAIN_PATIENT_CHARACTERISTICS = ("113108", "Retain Patient Characteristics Option")
CODE_RETAIN_DEVICE_IDENTITY = ("113109", "Retain Device Identity Option")

_DUMMY_BY_VR = {"PN": "ANONYMOUS", "DS": "0", "IS": "0", "UI": "", "DA": "", "DT": "", "TM": ""}
_DT_REST_RE = re.compile(r"^[0-9.+-]*$")
_PLAIN_TEXT = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")  # printable ASCII but the backslash
_AGE_RE = re.compile(r"^(\d{3})([DWMY])$")
_GROUP_LENGTH = 0x0000
_PLAN_CACHE_LIMIT = 4096
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
_PLAIN_TEXT_VRS = _TEXT_VRS - {"PN"}
_PATIENT_NAME, _PATIENT_ID, _PATIENT_BIRTH_DATE, _PATIENT_SEX, _PATIENT_AGE = 0x00100010, 0x00100020, 0x00100030, 0x00100040, 0x00101010
_ISSUER_OF_PATIENT_ID, _STUDY_INSTANCE_UID, _BURNED_IN_ANNOTATION = 0x00100021, 0x0020000D, 0x00280301
# StudyDate, AcquisitionDate, ContentDate, SeriesDate: the first present dates the patient's age.
_REFERENCE_DATES = (0x00080020, 0x00080022, 0x00080023, 0x00080021)

# Pseudonyms say what they are; the prefix avoids "SYN" (synthetic patients, DESIGN.md).
PSEUDONYM_ID_PREFIX = "ANON-"
PSEUDONYM_NAME_FAMILY = "ANONYMOUS"


def _tags(keywords: Iterable[str]) -> list[BaseTag]:
    out = []
    for kw in keywords:
        tag = tag_for_keyword(kw)
        if tag is None:
            raise KeyError(f"{kw} is not in pydicom's data dictionary")
        out.append(Tag(tag))
    return out


@dataclass(frozen=True)
class _Patient:
    """Keyed facts about the original patient, computed before anything is removed."""

    token: str  # hex of the keyed hash of the patient identity
    day_shift: int  # days added to every date (negative: into the past)
    age: str  # coarse PatientAge, or ""


class Deidentifier:
    """Callable: ``deid(ds) -> (ds, exclusion_reason)``; ``ds`` is changed in place and returned.

    ``exclusion_reason`` is non-empty when the instance must be stored but kept out of training
    (Burned In Annotation = YES, PS3.3 C.7.6.1.1.6).
    """

    def __init__(self, secret: bytes, cfg: DeidConfig | None = None):
        if not secret:
            raise ValueError("the de-identification secret must not be empty")
        self.secret = secret
        self.cfg = cfg or DeidConfig()
        actions = {int(tag): code for tag, code in zip(_tags(_TABLE), _TABLE.values())}
        if self.cfg.retain_patient_characteristics:
            for tag in _tags(_PATIENT_CHARACTERISTICS):
                actions[int(tag)] = "K"
        if self.cfg.retain_device_identity:
            for tag in _tags(_DEVICE_IDENTITY):
                actions[int(tag)] = "K"
        for tag in _tags(RETAINED_FOR_TRAINING):
            actions[int(tag)] = "K"
        self._actions = actions
        self._birth = frozenset(int(tag) for tag in _tags(_BIRTH))
        self._plans: dict[tuple[int, str | None], tuple[str, str]] = {}
        self._codes = self._method_codes()
        self._raw_marks: dict[tuple[bool, bool], list] = {}

    @classmethod
    def from_config(cls, cfg: Config, home: Home) -> "Deidentifier":
        return cls(home.secret("deid", cfg.deid.secret), cfg.deid)

    # -- public ----------------------------------------------------------------------------------------

    def __call__(self, ds: Dataset) -> tuple[Dataset, str]:
        patient = self._patient(ds)
        self._clean(ds, patient)
        self._pseudonymize(ds, patient)
        self._mark(ds)
        return ds, self._exclusion(ds)

    def remap_uid(self, uid: str) -> str:
        """The de-identified UID that ``uid`` becomes (the same for every instance and every restart)."""
        return keyed_uid(self.secret, uid, self.cfg.uid_root)

    def pseudonym(self, patient_id: str, issuer: str = "") -> str:
        """The PatientID that a patient with this ID (and issuer) receives."""
        return PSEUDONYM_ID_PREFIX + self._keyed("patient", f"{issuer}\\{patient_id}")[:16].upper()

    # -- steps -----------------------------------------------------------------------------------------

    def _keyed(self, purpose: str, value: str) -> str:
        return hmac.new(self.secret, f"{purpose}:{value}".encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()

    def _patient(self, ds: Dataset) -> _Patient:
        pid = _text_of(ds, _PATIENT_ID)
        issuer = _text_of(ds, _ISSUER_OF_PATIENT_ID)
        if pid:
            identity = f"{issuer}\\{pid}"
        else:
            # No ID: the name and birth date are the identity; with neither, the study stands alone.
            name, birth = _text_of(ds, _PATIENT_NAME), _text_of(ds, _PATIENT_BIRTH_DATE)
            identity = f"name:{name}\\{birth}" if (name or birth) else f"study:{_text_of(ds, _STUDY_INSTANCE_UID)}"
        token = self._keyed("patient", identity)
        # 1..3652 days into the past, per patient: intervals within a patient survive (E.3.6).
        shift = -(1 + int(self._keyed("dateshift", identity)[:8], 16) % 3652)
        age = ""
        if self.cfg.retain_patient_characteristics:
            given = _text_of(ds, _PATIENT_AGE)
            on = None if _AGE_RE.match(given) else _reference_date(ds)
            age = coarse_age(given, _text_of(ds, _PATIENT_BIRTH_DATE), on, self.cfg.age_bin_years)
        return _Patient(token, shift, age)

    def _clean(self, ds: Dataset, patient: _Patient) -> None:
        # Elements are inspected raw (tag and VR only) and converted only when changed: most of a
        # header is kept, and an unconverted element is written back as received, byte for byte.
        for elem in list(ds.elements()):
            tag = int(elem.tag)  # plain ints: BaseTag compares in Python, a dict lookup with it is slow
            action, vr = self._plan(tag, elem.VR)
            if action == "K":
                if vr == "SQ":
                    for item in ds[tag].value:
                        self._clean(item, patient)
            elif action == "X":
                del ds[tag]
            elif action == "Z":
                if vr == "SQ":
                    ds[tag] = DataElement(tag, vr, Sequence([]))
                else:
                    _set(ds, tag, vr, [] if vr not in _TEXT_VRS else [""])
            elif action == "D":
                _set(ds, tag, vr, [_DUMMY_BY_VR.get(vr, "ANONYMIZED")])
            elif action == "U":
                values = _values(ds, tag)
                if any(values):
                    _set(ds, tag, vr, [v if (not v or v.startswith(_STANDARD_UID_ROOT)) else self.remap_uid(v) for v in values])
            elif action == "C":
                _set(ds, tag, vr, [_shift(v, vr, patient.day_shift) for v in _values(ds, tag)])

    def _plan(self, tag: int, read_vr: str | None) -> tuple[str, str]:
        """What happens to an element with this tag, read with this VR: (action, VR to write it with).

        Actions: K keep (a sequence's items are cleaned), X remove, Z empty, D dummy, U remap the UIDs,
        C shift the dates. The answer depends on nothing else, so it is worked out once per tag and VR.
        """
        key = (tag, read_vr)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._decide(tag, read_vr)
            if len(self._plans) < _PLAN_CACHE_LIMIT:  # tags come from the network: keep the cache bounded
                self._plans[key] = plan
        return plan

    def _decide(self, tag: int, read_vr: str | None) -> tuple[str, str]:
        group, elem = tag >> 16, tag & 0xFFFF
        vr = read_vr or "UN"
        if group % 2 == 1 or elem == _GROUP_LENGTH or 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
            return "X", vr
        if tag in _PIXEL_TAGS:
            return "K", vr  # never touched: pixel data is stored as received
        action = self._actions.get(tag)
        known = dictionary_has_tag(tag)
        if action is None and not known and group not in (0x0002, 0xFFFE):
            return "X", vr  # a public attribute no dictionary knows: nobody can say it is safe
        if read_vr is None or read_vr == "UN":
            vr = dictionary_VR(tag) if known else "UN"
        if tag in self._birth:
            action = "Z" if action == "Z" else "X"
        elif vr in ("DA", "DT"):
            action = "K" if self.cfg.retain_longitudinal_dates else "C"
        elif action is None:
            action = {"UI": "U", "PN": "X", "SQ": "K"}.get(vr)
        if action is None or action == "K":
            return "K", vr
        if action == "X" or (action == "D" and vr == "SQ"):
            return "X", vr
        if action == "U" and (vr != "UI" or _KEPT_UID_KEYWORD.search(keyword_for_tag(tag) or "")):
            return "K", vr  # a class, syntax or scheme UID, or not a UID at all
        if action == "C" and vr not in ("DA", "DT"):
            return "X", vr
        return action, vr

    def _pseudonymize(self, ds: Dataset, patient: _Patient) -> None:
        _set(ds, _PATIENT_ID, "LO", [PSEUDONYM_ID_PREFIX + patient.token[:16].upper()])
        _set(ds, _PATIENT_NAME, "PN", [f"{PSEUDONYM_NAME_FAMILY}^{patient.token[:8].upper()}"])
        if self.cfg.retain_patient_characteristics:
            if patient.age:
                _set(ds, _PATIENT_AGE, "AS", [patient.age])
            elif _PATIENT_AGE in ds:
                del ds[_PATIENT_AGE]
        if _PATIENT_BIRTH_DATE not in ds:
            _set(ds, _PATIENT_BIRTH_DATE, "DA", [""])  # Type 2 in the Patient Module (PS3.3 C.7.1.1)
        if _PATIENT_SEX not in ds:
            _set(ds, _PATIENT_SEX, "CS", [""])

    def _method_codes(self) -> list[tuple[str, str]]:
        codes = [CODE_BASIC_PROFILE]
        codes.append(CODE_RETAIN_FULL_DATES if self.cfg.retain_longitudinal_dates else CODE_RETAIN_MODIFIED_DATES)
        if self.cfg.retain_patient_characteristics:
            codes.append(CODE_RETAIN_PATIENT_CHARACTERISTICS)
        if self.cfg.retain_device_identity:
            codes.append(CODE_RETAIN_DEVICE_IDENTITY)
        return codes

    def _marks(self) -> Dataset:
        """PatientIdentityRemoved, the method text and codes, temporal flag (PS3.3 C.7.1.1 and C.12.1)."""
        marks = Dataset()
        marks.PatientIdentityRemoved = "YES"
        marks.DeidentificationMethod = "synthpacs PS3.15 E.1-1 Basic Profile" + (
            " + dates kept" if self.cfg.retain_longitudinal_dates else " + dates shifted"
        )
        items = []
        for value, meaning in self._codes:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        marks.DeidentificationMethodCodeSequence = Sequence(items)
        marks.LongitudinalTemporalInformationModified = "UNMODIFIED" if self.cfg.retain_longitudinal_dates else "MODIFIED"
        return marks

    def _mark(self, ds: Dataset) -> None:
        # The marks are the same for every instance: encoded once per encoding and added as raw
        # elements, which the store's writer copies instead of encoding a sequence each time.
        encoding = getattr(ds, "original_encoding", (None, None))
        if None in encoding:
            for elem in self._marks():
                ds[elem.tag] = elem
            return
        raw = self._raw_marks.get(encoding)
        if raw is None:
            fp = DicomBytesIO()
            fp.is_implicit_VR, fp.is_little_endian = encoding
            write_dataset(fp, self._marks())
            parsed = read_dataset(io.BytesIO(fp.getvalue()), *encoding)
            raw = self._raw_marks[encoding] = [parsed.get_item(tag) for tag in parsed.keys()]
        for elem in raw:
            ds[elem.tag] = elem

    @staticmethod
    def _exclusion(ds: Dataset) -> str:
        if _text_of(ds, _BURNED_IN_ANNOTATION).upper() == "YES":
            return "burned-in annotation"
        return ""


# -- values ------------------------------------------------------------------------------------------


def _str(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, DataElement):
        value = value.value
    return str(value).strip() if value is not None else ""


def _text_of(ds: Dataset, tag: int) -> str:
    """``_str(ds.get(tag))``, read from the raw bytes when pydicom's conversion cannot change them.

    Printable ASCII without a backslash (several values), NUL or ESC (ISO 2022, PS3.5 §6.1.2.5.3)
    decodes alike in every character set; anything else is converted by pydicom.
    """
    if tag not in ds:
        return ""
    elem = ds.get_item(tag)
    # Not for names: pydicom's PersonName drops empty trailing component groups ("DOE^JOHN=" reads "DOE^JOHN").
    if isinstance(elem, RawDataElement) and (elem.VR or dictionary_VR(tag)) in _PLAIN_TEXT_VRS:
        raw = elem.value or b""
        if _PLAIN_TEXT.fullmatch(raw):
            return raw.decode("ascii").strip()
    return _str(ds[tag])


def _values(ds: Dataset, tag: BaseTag) -> list[str]:
    """The text values of a string element, read from its raw bytes when it was never converted."""
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement):
        text = (elem.value or b"").decode("latin-1").rstrip("\x00 ")
        return text.split("\\") if text else []
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def _set(ds: Dataset, tag: int, vr: str, values: list[str]) -> None:
    """Put an ASCII string element; as a raw element in the dataset's own encoding when it has one.

    Every value de-identification writes (pseudonyms, remapped UIDs, shifted dates, empties) is ASCII,
    so it is encoded here once instead of through pydicom's writer (PS3.5 §6.2: UI padded with NUL,
    other string VRs with a space, to an even length).
    """
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None or little is None:
        empty = "" if vr in _TEXT_VRS else None
        ds[tag] = DataElement(tag, vr, (values[0] if len(values) == 1 else values) if values else empty)
        return
    data = "\\".join(values).encode("ascii")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    ds[tag] = RawDataElement(BaseTag(tag), None if implicit else vr, len(data), data, 0, implicit, little, True, False)


def _parse_da(text: str) -> _dt.date | None:
    text = text.strip()
    if len(text) < 8 or not text[:8].isdigit():
        return None
    try:
        return _dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def _shift(text: str, vr: str, days: int) -> str:
    """A DA or DT value moved by ``days`` (E.3.6 Modified Dates); a value we cannot parse is emptied."""
    text = text.strip()
    day = _parse_da(text)
    if day is None:
        return ""
    try:
        shifted = (day + _dt.timedelta(days=days)).strftime("%Y%m%d")
    except OverflowError:
        return ""
    rest = text[8:] if vr == "DT" else ""
    return shifted + (rest if _DT_REST_RE.match(rest) else "")


def _reference_date(ds: Dataset) -> _dt.date | None:
    for tag in _REFERENCE_DATES:
        day = _parse_da(_text_of(ds, tag))
        if day is not None:
            return day
    return None


def coarse_age(age: str, birth_date: str, on: _dt.date | None, bin_years: int = 5) -> str:
    """PatientAge (AS, PS3.5 §6.2) reduced to what training needs and little else.

    Under 2 years: whole months (growth plates change fast); then years rounded down to ``bin_years``;
    90 and over are reported as 090Y together (as HIPAA Safe Harbor aggregates them).
    """
    days: float | None = None
    m = _AGE_RE.match(age or "")
    if m:
        n, unit = int(m.group(1)), m.group(2)
        days = n * {"D": 1, "W": 7, "M": 30.4375, "Y": 365.25}[unit]
    else:
        birth = _parse_da(birth_date or "")
        if birth is not None and on is not None and on >= birth:
            days = (on - birth).days
    if days is None:
        return ""
    years = days / 365.25
    if years < 2:
        return f"{int(days // 30.4375):03d}M"
    if years >= 90:
        return "090Y"
    step = max(1, bin_years)
    return f"{int(years) // step * step:03d}Y"

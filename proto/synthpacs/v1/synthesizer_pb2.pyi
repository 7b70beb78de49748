from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_UNSPECIFIED: _ClassVar[Encoding]
    ENCODING_PNG_8: _ClassVar[Encoding]
    ENCODING_PNG_16: _ClassVar[Encoding]
    ENCODING_RAW_UINT8: _ClassVar[Encoding]
    ENCODING_RAW_UINT16: _ClassVar[Encoding]
    ENCODING_DICOM_SC_8: _ClassVar[Encoding]
    ENCODING_DICOM_SC_16: _ClassVar[Encoding]

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    MODEL_STATE_AVAILABLE: _ClassVar[ModelState]
    MODEL_STATE_LOADING: _ClassVar[ModelState]
    MODEL_STATE_READY: _ClassVar[ModelState]
    MODEL_STATE_FAILED: _ClassVar[ModelState]
ENCODING_UNSPECIFIED: Encoding
ENCODING_PNG_8: Encoding
ENCODING_PNG_16: Encoding
ENCODING_RAW_UINT8: Encoding
ENCODING_RAW_UINT16: Encoding
ENCODING_DICOM_SC_8: Encoding
ENCODING_DICOM_SC_16: Encoding
MODEL_STATE_UNSPECIFIED: ModelState
MODEL_STATE_AVAILABLE: ModelState
MODEL_STATE_LOADING: ModelState
MODEL_STATE_READY: ModelState
MODEL_STATE_FAILED: ModelState

class ListModelsRequest(_message.Message):
    __slots__ = ("all_versions", "name")
    ALL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    all_versions: bool
    name: str
    def __init__(self, all_versions: _Optional[bool] = ..., name: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "ref", "latest", "architecture", "resolution", "channels", "z_dim", "state", "error", "device", "dtype", "batch_sizes", "card_json", "conditions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    Z_DIM_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    CARD_JSON_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    ref: str
    latest: bool
    architecture: str
    resolution: int
    channels: int
    z_dim: int
    state: ModelState
    error: str
    device: str
    dtype: str
    batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    card_json: str
    conditions: _containers.RepeatedCompositeFieldContainer[ConditionField]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., ref: _Optional[str] = ..., latest: _Optional[bool] = ..., architecture: _Optional[str] = ..., resolution: _Optional[int] = ..., channels: _Optional[int] = ..., z_dim: _Optional[int] = ..., state: _Optional[_Union[ModelState, str]] = ..., error: _Optional[str] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., batch_sizes: _Optional[_Iterable[int]] = ..., card_json: _Optional[str] = ..., conditions: _Optional[_Iterable[_Union[ConditionField, _Mapping]]] = ...) -> None: ...

class ConditionField(_message.Message):
    __slots__ = ("name", "values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "count", "seeds", "first_seed", "truncation_psi", "encoding", "request_id", "body_part", "view", "finding")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_PSI_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_PART_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    FINDING_FIELD_NUMBER: _ClassVar[int]
    model: str
    count: int
    seeds: _containers.RepeatedScalarFieldContainer[int]
    first_seed: int
    truncation_psi: float
    encoding: Encoding
    request_id: str
    body_part: str
    view: str
    finding: str
    def __init__(self, model: _Optional[str] = ..., count: _Optional[int] = ..., seeds: _Optional[_Iterable[int]] = ..., first_seed: _Optional[int] = ..., truncation_psi: _Optional[float] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., request_id: _Optional[str] = ..., body_part: _Optional[str] = ..., view: _Optional[str] = ..., finding: _Optional[str] = ...) -> None: ...

class GeneratedImage(_message.Message):
    __slots__ = ("seed", "index", "width", "height", "channels", "encoding", "data", "model", "truncation_psi", "request_id", "sop_instance_uid", "body_part", "view", "finding")
    SEED_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_PSI_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    BODY_PART_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    FINDING_FIELD_NUMBER: _ClassVar[int]
    seed: int
    index: int
    width: int
    height: int
    channels: int
    encoding: Encoding
    data: bytes
    model: str
    truncation_psi: float
    request_id: str
    sop_instance_uid: str
    body_part: str
    view: str
    finding: str
    def __init__(self, seed: _Optional[int] = ..., index: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., channels: _Optional[int] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., data: _Optional[bytes] = ..., model: _Optional[str] = ..., truncation_psi: _Optional[float] = ..., request_id: _Optional[str] = ..., sop_instance_uid: _Optional[str] = ..., body_part: _Optional[str] = ..., view: _Optional[str] = ..., finding: _Optional[str] = ...) -> None: ...

class GenerateStudyRequest(_message.Message):
    __slots__ = ("model", "count", "seeds", "first_seed", "truncation_psi", "bit_depth", "destination_ae_title", "burn_in_label", "series_description", "request_id", "body_part", "view", "finding")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_PSI_FIELD_NUMBER: _ClassVar[int]
    BIT_DEPTH_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_AE_TITLE_FIELD_NUMBER: _ClassVar[int]
    BURN_IN_LABEL_FIELD_NUMBER: _ClassVar[int]
    SERIES_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_PART_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    FINDING_FIELD_NUMBER: _ClassVar[int]
    model: str
    count: int
    seeds: _containers.RepeatedScalarFieldContainer[int]
    first_seed: int
    truncation_psi: float
    bit_depth: int
    destination_ae_title: str
    burn_in_label: bool
    series_description: str
    request_id: str
    body_part: str
    view: str
    finding: str
    def __init__(self, model: _Optional[str] = ..., count: _Optional[int] = ..., seeds: _Optional[_Iterable[int]] = ..., first_seed: _Optional[int] = ..., truncation_psi: _Optional[float] = ..., bit_depth: _Optional[int] = ..., destination_ae_title: _Optional[str] = ..., burn_in_label: _Optional[bool] = ..., series_description: _Optional[str] = ..., request_id: _Optional[str] = ..., body_part: _Optional[str] = ..., view: _Optional[str] = ..., finding: _Optional[str] = ...) -> None: ...

class InstanceStatus(_message.Message):
    __slots__ = ("sop_instance_uid", "seed", "state", "detail")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[InstanceStatus.State]
        STATE_STORED: _ClassVar[InstanceStatus.State]
        STATE_QUEUED: _ClassVar[InstanceStatus.State]
        STATE_REFUSED_NEAR_COPY: _ClassVar[InstanceStatus.State]
        STATE_FAILED: _ClassVar[InstanceStatus.State]
    STATE_UNSPECIFIED: InstanceStatus.State
    STATE_STORED: InstanceStatus.State
    STATE_QUEUED: InstanceStatus.State
    STATE_REFUSED_NEAR_COPY: InstanceStatus.State
    STATE_FAILED: InstanceStatus.State
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    seed: int
    state: InstanceStatus.State
    detail: str
    def __init__(self, sop_instance_uid: _Optional[str] = ..., seed: _Optional[int] = ..., state: _Optional[_Union[InstanceStatus.State, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class GenerateStudyResponse(_message.Message):
    __slots__ = ("study_instance_uid", "series_instance_uid", "destination", "instances", "model", "truncation_psi", "request_id")
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_PSI_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    series_instance_uid: str
    destination: str
    instances: _containers.RepeatedCompositeFieldContainer[InstanceStatus]
    model: str
    truncation_psi: float
    request_id: str
    def __init__(self, study_instance_uid: _Optional[str] = ..., series_instance_uid: _Optional[str] = ..., destination: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[InstanceStatus, _Mapping]]] = ..., model: _Optional[str] = ..., truncation_psi: _Optional[float] = ..., request_id: _Optional[str] = ...) -> None: ...

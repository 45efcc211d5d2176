import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StoreCategory(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STORE_CATEGORY_UNSPECIFIED: _ClassVar[StoreCategory]
    STORE_CATEGORY_REFILL_ZERO_WASTE: _ClassVar[StoreCategory]
    STORE_CATEGORY_CAFE: _ClassVar[StoreCategory]
    STORE_CATEGORY_VEGAN: _ClassVar[StoreCategory]
    STORE_CATEGORY_UPCYCLE: _ClassVar[StoreCategory]
    STORE_CATEGORY_BOOKS: _ClassVar[StoreCategory]
    STORE_CATEGORY_MARKET: _ClassVar[StoreCategory]
    STORE_CATEGORY_LODGING: _ClassVar[StoreCategory]
    STORE_CATEGORY_PUBLIC_DROP_BOX: _ClassVar[StoreCategory]
    STORE_CATEGORY_GENERAL: _ClassVar[StoreCategory]
    STORE_CATEGORY_RECYCLING_CENTER: _ClassVar[StoreCategory]

class PickupCategory(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PICKUP_CATEGORY_UNSPECIFIED: _ClassVar[PickupCategory]
    PICKUP_CATEGORY_CLEAR_PET: _ClassVar[PickupCategory]
    PICKUP_CATEGORY_COLORED_PET: _ClassVar[PickupCategory]
    PICKUP_CATEGORY_CAN: _ClassVar[PickupCategory]
    PICKUP_CATEGORY_PAPER: _ClassVar[PickupCategory]
    PICKUP_CATEGORY_PLASTIC: _ClassVar[PickupCategory]
    PICKUP_CATEGORY_GLASS: _ClassVar[PickupCategory]
    PICKUP_CATEGORY_TEXTILE: _ClassVar[PickupCategory]
    PICKUP_CATEGORY_ELECTRONICS: _ClassVar[PickupCategory]
    PICKUP_CATEGORY_GENERAL: _ClassVar[PickupCategory]

class PlaceSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLACE_SOURCE_UNSPECIFIED: _ClassVar[PlaceSource]
    PLACE_SOURCE_SAMPLE: _ClassVar[PlaceSource]
    PLACE_SOURCE_PUBLIC_DATA: _ClassVar[PlaceSource]
    PLACE_SOURCE_KAKAO: _ClassVar[PlaceSource]
STORE_CATEGORY_UNSPECIFIED: StoreCategory
STORE_CATEGORY_REFILL_ZERO_WASTE: StoreCategory
STORE_CATEGORY_CAFE: StoreCategory
STORE_CATEGORY_VEGAN: StoreCategory
STORE_CATEGORY_UPCYCLE: StoreCategory
STORE_CATEGORY_BOOKS: StoreCategory
STORE_CATEGORY_MARKET: StoreCategory
STORE_CATEGORY_LODGING: StoreCategory
STORE_CATEGORY_PUBLIC_DROP_BOX: StoreCategory
STORE_CATEGORY_GENERAL: StoreCategory
STORE_CATEGORY_RECYCLING_CENTER: StoreCategory
PICKUP_CATEGORY_UNSPECIFIED: PickupCategory
PICKUP_CATEGORY_CLEAR_PET: PickupCategory
PICKUP_CATEGORY_COLORED_PET: PickupCategory
PICKUP_CATEGORY_CAN: PickupCategory
PICKUP_CATEGORY_PAPER: PickupCategory
PICKUP_CATEGORY_PLASTIC: PickupCategory
PICKUP_CATEGORY_GLASS: PickupCategory
PICKUP_CATEGORY_TEXTILE: PickupCategory
PICKUP_CATEGORY_ELECTRONICS: PickupCategory
PICKUP_CATEGORY_GENERAL: PickupCategory
PLACE_SOURCE_UNSPECIFIED: PlaceSource
PLACE_SOURCE_SAMPLE: PlaceSource
PLACE_SOURCE_PUBLIC_DATA: PlaceSource
PLACE_SOURCE_KAKAO: PlaceSource

class GeoPoint(_message.Message):
    __slots__ = ("latitude", "longitude")
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    latitude: float
    longitude: float
    def __init__(self, latitude: _Optional[float] = ..., longitude: _Optional[float] = ...) -> None: ...

class Place(_message.Message):
    __slots__ = ("id", "name", "address", "road_address", "phone", "location", "store_category", "pickup_categories", "source", "opening_hours", "url", "updated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ROAD_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PHONE_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    STORE_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PICKUP_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OPENING_HOURS_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    address: str
    road_address: str
    phone: str
    location: GeoPoint
    store_category: StoreCategory
    pickup_categories: _containers.RepeatedScalarFieldContainer[PickupCategory]
    source: PlaceSource
    opening_hours: str
    url: str
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., address: _Optional[str] = ..., road_address: _Optional[str] = ..., phone: _Optional[str] = ..., location: _Optional[_Union[GeoPoint, _Mapping]] = ..., store_category: _Optional[_Union[StoreCategory, str]] = ..., pickup_categories: _Optional[_Iterable[_Union[PickupCategory, str]]] = ..., source: _Optional[_Union[PlaceSource, str]] = ..., opening_hours: _Optional[str] = ..., url: _Optional[str] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PlaceHit(_message.Message):
    __slots__ = ("place", "distance_m", "distance_text")
    PLACE_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_M_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_TEXT_FIELD_NUMBER: _ClassVar[int]
    place: Place
    distance_m: float
    distance_text: str
    def __init__(self, place: _Optional[_Union[Place, _Mapping]] = ..., distance_m: _Optional[float] = ..., distance_text: _Optional[str] = ...) -> None: ...

class SearchNearbyRequest(_message.Message):
    __slots__ = ("center", "radius_m", "limit", "store_categories", "pickup_categories")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    RADIUS_M_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    STORE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    PICKUP_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    center: GeoPoint
    radius_m: int
    limit: int
    store_categories: _containers.RepeatedScalarFieldContainer[StoreCategory]
    pickup_categories: _containers.RepeatedScalarFieldContainer[PickupCategory]
    def __init__(self, center: _Optional[_Union[GeoPoint, _Mapping]] = ..., radius_m: _Optional[int] = ..., limit: _Optional[int] = ..., store_categories: _Optional[_Iterable[_Union[StoreCategory, str]]] = ..., pickup_categories: _Optional[_Iterable[_Union[PickupCategory, str]]] = ...) -> None: ...

class SearchNearbyResponse(_message.Message):
    __slots__ = ("places",)
    PLACES_FIELD_NUMBER: _ClassVar[int]
    places: _containers.RepeatedCompositeFieldContainer[PlaceHit]
    def __init__(self, places: _Optional[_Iterable[_Union[PlaceHit, _Mapping]]] = ...) -> None: ...

class SearchTextRequest(_message.Message):
    __slots__ = ("query", "near", "limit")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    NEAR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    query: str
    near: GeoPoint
    limit: int
    def __init__(self, query: _Optional[str] = ..., near: _Optional[_Union[GeoPoint, _Mapping]] = ..., limit: _Optional[int] = ...) -> None: ...

class SearchTextResponse(_message.Message):
    __slots__ = ("places",)
    PLACES_FIELD_NUMBER: _ClassVar[int]
    places: _containers.RepeatedCompositeFieldContainer[PlaceHit]
    def __init__(self, places: _Optional[_Iterable[_Union[PlaceHit, _Mapping]]] = ...) -> None: ...

class GetPlaceRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetPlaceResponse(_message.Message):
    __slots__ = ("place",)
    PLACE_FIELD_NUMBER: _ClassVar[int]
    place: Place
    def __init__(self, place: _Optional[_Union[Place, _Mapping]] = ...) -> None: ...

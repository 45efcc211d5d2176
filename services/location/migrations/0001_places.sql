-- Places: recycling centres, collection points and zero-waste stores.
-- Distance search: earthdistance over cube. The earth point is a stored column (ll_to_earth is
-- a SQL function: evaluating it per row at query time costs ~10 us/row) with a GiST index that
-- serves both the earth_box prefilter and nearest-first ordering (cube's <-> KNN operator: the
-- chord distance orders exactly like the great-circle distance).
-- Text search: pg_trgm GIN index on name + addresses (works for Korean).
CREATE EXTENSION IF NOT EXISTS cube;
CREATE EXTENSION IF NOT EXISTS earthdistance;
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE location_place (
    id                text PRIMARY KEY,
    source            text NOT NULL,            -- eco2.location.v1.PlaceSource name without prefix
    name              text NOT NULL,
    address           text NOT NULL DEFAULT '',
    road_address      text NOT NULL DEFAULT '',
    phone             text NOT NULL DEFAULT '',
    latitude          double precision NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude         double precision NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    store_category    text NOT NULL,            -- StoreCategory name without prefix
    pickup_categories text[] NOT NULL DEFAULT '{}',  -- PickupCategory names without prefix
    opening_hours     text NOT NULL DEFAULT '',
    url               text NOT NULL DEFAULT '',
    updated_at        timestamptz NOT NULL DEFAULT now(),
    search_text       text GENERATED ALWAYS AS (name || ' ' || address || ' ' || road_address) STORED,
    earth             cube GENERATED ALWAYS AS (ll_to_earth(latitude, longitude)) STORED
);
CREATE INDEX location_place_earth ON location_place USING gist (earth);
CREATE INDEX location_place_trgm ON location_place USING gin (search_text gin_trgm_ops);
CREATE INDEX location_place_source ON location_place (source);

-- Price models of plan quotas.
--
-- plan_quotas.price
--   The quota's price in the plan's currency, a JSON object with Stripe's
--   models (internal/price): {"model":"per_unit","unit_amount":"0.002"},
--   "graduated" or "volume" with "tiers" [{"up_to", "unit_amount",
--   "flat_amount"}, ..., {"up_to": null, ...}], or "package" with
--   "package_size", "package_amount" and "round". Amounts are decimal
--   strings. NULL: not priced. The bill reads this column only.
-- plan_quotas.unit_price
--   Kept for readers of the earlier schema: written only with a per_unit
--   price, as its unit_amount; NULL with every other model. Every price set
--   before this migration was a unit price, so it becomes a per_unit price
--   of the same amount, as Postgres writes the number.
ALTER TABLE plan_quotas
    ADD COLUMN price jsonb CHECK (price IS NULL OR (jsonb_typeof(price) = 'object' AND price ? 'model'));
UPDATE plan_quotas SET price = jsonb_build_object('model', 'per_unit', 'unit_amount', unit_price::text)
WHERE unit_price IS NOT NULL;
ALTER TABLE plan_quotas
    ADD CONSTRAINT plan_quotas_unit_price_per_unit CHECK (unit_price IS NULL OR price->>'model' = 'per_unit');

-- Prices for the customer usage page's projected bill: a price per unit
-- of each metric (NULL: not priced) in the plan's currency.
ALTER TABLE plans ADD COLUMN currency text NOT NULL DEFAULT 'usd' CHECK (currency ~ '^[a-z]{3}$');
ALTER TABLE plan_quotas ADD COLUMN unit_price numeric CHECK (unit_price >= 0);

-- posedge schema 5: indexes retention needs (agent/retention/rules.py) so that each prune batch
-- finds its rows without scanning a table: the oldest sales first, and a sale's coupon redemptions.
CREATE INDEX sales_recorded ON sales (recorded_at);
CREATE INDEX coupon_redemptions_sale ON coupon_redemptions (sale_id);

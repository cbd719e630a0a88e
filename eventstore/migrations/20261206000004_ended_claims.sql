-- Claims of bookings that have ended are forgotten (they can never conflict with a new
-- booking, which must start in the future); this finds them.
CREATE INDEX seat_claims_ends ON seat_claims (upper(during));

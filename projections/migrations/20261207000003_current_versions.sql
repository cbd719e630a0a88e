-- Found by the soak's statement report (issue 14): three statements whose cost grew with
-- the tables, until the read side fell behind after ~40 minutes at 300 operations/s.
--
-- Closing an aggregate's current version (`history::Versions::close_current`) looked the
-- row up by the primary key's `account_id` prefix and filtered `valid_to IS NULL`: it
-- read the aggregate's whole history, which grows with every deposit (867 blocks and
-- 30 ms a batch on 200 accounts after 38 minutes). One row per aggregate is current.
CREATE INDEX account_balance_history_current ON account_balance_history (account_id)
    WHERE valid_to IS NULL;
CREATE INDEX booking_status_history_current ON booking_status_history (booking_id)
    WHERE valid_to IS NULL;
CREATE INDEX subscription_history_current ON subscription_history (subscription_id)
    WHERE valid_to IS NULL;

-- The scheduler's look for expired holds walked every booking by creation time and
-- skipped all but the pending ones (1,770 blocks a tick after 38 minutes).
CREATE INDEX bookings_pending_by_age ON bookings (created_at) WHERE status = 'pending';

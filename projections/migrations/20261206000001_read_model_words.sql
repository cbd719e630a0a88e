-- The words a read-model column may hold, as the projector's enums write them
-- (BookingStatus, PaymentStatus, PaymentKind, AccountStatus, ScheduleStatus and the
-- ledgers' kinds). A row outside them is a bug, refused at the write.
ALTER TABLE accounts
    ADD CONSTRAINT accounts_status_words CHECK (status IN ('open', 'closed'));
ALTER TABLE account_balance_history
    ADD CONSTRAINT account_balance_history_status_words CHECK (status IN ('open', 'closed'));
ALTER TABLE account_ledger
    ADD CONSTRAINT account_ledger_kind_words CHECK (kind IN ('deposit', 'withdrawal'));
ALTER TABLE bookings
    ADD CONSTRAINT bookings_status_words
        CHECK (status IN ('pending', 'confirmed', 'rejected', 'cancelled', 'expired'));
ALTER TABLE booking_status_history
    ADD CONSTRAINT booking_status_history_status_words
        CHECK (status IN ('pending', 'confirmed', 'rejected', 'cancelled', 'expired'));
ALTER TABLE payments
    ADD CONSTRAINT payments_status_words
        CHECK (status IN ('pending', 'captured', 'failed', 'refunded', 'active', 'completed',
                          'suspended')),
    ADD CONSTRAINT payments_kind_words CHECK (kind IN ('one_time', 'recurring'));
ALTER TABLE payment_ledger
    ADD CONSTRAINT payment_ledger_kind_words CHECK (kind IN ('capture', 'refund'));
ALTER TABLE payment_schedules
    ADD CONSTRAINT payment_schedules_status_words
        CHECK (status IN ('active', 'completed', 'suspended'));

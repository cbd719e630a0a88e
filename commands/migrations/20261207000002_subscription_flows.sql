-- The subscription flows (ADR 0034) among the words a flow's kind may hold.
ALTER TABLE pm_flows DROP CONSTRAINT pm_flows_kind_words;
ALTER TABLE pm_flows
    ADD CONSTRAINT pm_flows_kind_words
        CHECK (kind IN ('booking-charge', 'booking-refund', 'payment-charge', 'recurring-charge',
                        'booking-expiry', 'subscription-charge', 'subscription-proration',
                        'subscription-refund', 'subscription-end'));

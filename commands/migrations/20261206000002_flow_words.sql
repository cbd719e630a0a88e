-- The words a flow's kind and status may hold, as FlowKind and FlowStatus write them.
ALTER TABLE pm_flows
    ADD CONSTRAINT pm_flows_kind_words
        CHECK (kind IN ('booking-charge', 'booking-refund', 'payment-charge', 'recurring-charge',
                        'booking-expiry')),
    ADD CONSTRAINT pm_flows_status_words
        CHECK (status IN ('running', 'confirmed', 'captured', 'refunded', 'compensated',
                          'rejected', 'expired', 'failed', 'retrying', 'suspended', 'skipped',
                          'stuck'));

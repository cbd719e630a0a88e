-- Finished flows are forgotten after CHRONICLE_FLOW_RETENTION_DAYS; this finds them
-- without reading the running and stuck ones.
CREATE INDEX pm_flows_finished ON pm_flows (updated_at) WHERE status NOT IN ('running', 'stuck');

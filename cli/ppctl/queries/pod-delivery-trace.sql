-- A message's delivery trace by queue id: the PoD message verdict and every maillog line, in time order.
-- parameters: since_day, until_day, since, until, instance, qid, qid
SELECT event_time, instance, event_type,
       coalesce(raw.sm."from", raw.envelope."from") AS sender,
       coalesce(array_join(raw.sm."to", ', '), array_join(raw.envelope.rcpts, ', ')) AS recipients,
       coalesce(raw.sm.stat, raw.filter.disposition) AS status,
       raw.sm.relay AS relay, raw.sm.dsn AS dsn
FROM pod
WHERE dt BETWEEN ? AND ?
  AND from_iso8601_timestamp(received_time) >= from_iso8601_timestamp(?)
  AND from_iso8601_timestamp(received_time) < from_iso8601_timestamp(?)
  AND ? IN ('', instance)
  AND ((event_type = 'maillog' AND raw.sm.qid = ?) OR (event_type = 'message' AND raw.filter.qid = ?))
ORDER BY from_iso8601_timestamp(event_time), event_type

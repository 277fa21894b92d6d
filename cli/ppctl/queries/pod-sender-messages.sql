-- A sender's messages across recipients (PoD message log): when, to whom, the queue id and what the filter did.
-- parameters: since_day, until_day, since, until, instance, sender
SELECT p.event_time AS message_time, p.instance, p.raw.filter.qid AS qid, lower(r.rcpt) AS recipient,
       array_join(p.raw.msg.normalizedHeader.subject, ' ') AS subject, p.raw.filter.disposition AS disposition
FROM pod p
CROSS JOIN UNNEST(p.raw.envelope.rcpts) AS r(rcpt)
WHERE p.dt BETWEEN ? AND ?
  AND from_iso8601_timestamp(p.received_time) >= from_iso8601_timestamp(?)
  AND from_iso8601_timestamp(p.received_time) < from_iso8601_timestamp(?)
  AND ? IN ('', p.instance)
  AND p.event_type = 'message'
  AND lower(p.raw.envelope."from") = lower(?)
ORDER BY message_time, qid, recipient

-- Messages delivered, then found malicious: a threat whose verdict (threatTime) came after delivery.
-- parameters: since_day, until_day, since, until, instance
SELECT m.event_time AS message_time, m.instance, m.raw.QID AS qid, m.raw.sender AS sender, m.raw.subject AS subject,
       array_join(m.raw.recipient, ', ') AS recipients, t.threatTime AS threat_time, t.classification,
       t.threatStatus AS threat_status, t.campaignID AS campaign_id
FROM tap_messages m
CROSS JOIN UNNEST(m.raw.threatsInfoMap) AS t(campaignID, classification, threat, threatID, threatStatus, threatTime,
                                             threatType)
WHERE m.dt BETWEEN ? AND ?
  AND from_iso8601_timestamp(m.received_time) >= from_iso8601_timestamp(?)
  AND from_iso8601_timestamp(m.received_time) < from_iso8601_timestamp(?)
  AND ? IN ('', m.instance)
  AND m.event_type = 'messagesDelivered'
  AND from_iso8601_timestamp(t.threatTime) > from_iso8601_timestamp(m.event_time)
ORDER BY message_time, qid, threat_time

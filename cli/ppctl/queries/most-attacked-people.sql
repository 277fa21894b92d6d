-- Most-attacked people: recipients of the most threat messages (delivered or blocked), with distinct threats and campaigns.
-- parameters: since_day, until_day, since, until, instance
WITH hits AS (
  SELECT lower(r.recipient) AS recipient, m.raw.GUID AS guid, m.event_type, t.threatID AS threat_id,
         t.campaignID AS campaign_id, t.classification
  FROM tap_messages m
  CROSS JOIN UNNEST(m.raw.recipient) AS r(recipient)
  CROSS JOIN UNNEST(m.raw.threatsInfoMap) AS t(campaignID, classification, threat, threatID, threatStatus, threatTime,
                                               threatType)
  WHERE m.dt BETWEEN ? AND ?
    AND from_iso8601_timestamp(m.received_time) >= from_iso8601_timestamp(?)
    AND from_iso8601_timestamp(m.received_time) < from_iso8601_timestamp(?)
    AND ? IN ('', m.instance)
)
SELECT recipient,
       count(DISTINCT guid) AS messages,
       count(DISTINCT CASE WHEN event_type = 'messagesDelivered' THEN guid END) AS delivered,
       count(DISTINCT threat_id) AS threats,
       count(DISTINCT campaign_id) AS campaigns
FROM hits
GROUP BY recipient
ORDER BY messages DESC, recipient
LIMIT 20

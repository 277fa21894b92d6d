-- One campaign's blast radius: per recipient, its messages delivered and blocked, and clicks permitted and blocked.
-- parameters: since_day, until_day, since, until, instance, campaign, since_day, until_day, since, until, instance, campaign
WITH messages AS (
  SELECT DISTINCT m.raw.GUID AS guid, r.recipient, m.event_type
  FROM tap_messages m
  CROSS JOIN UNNEST(m.raw.threatsInfoMap) AS t(campaignID, classification, threat, threatID, threatStatus, threatTime,
                                               threatType)
  CROSS JOIN UNNEST(m.raw.recipient) AS r(recipient)
  WHERE m.dt BETWEEN ? AND ?
    AND from_iso8601_timestamp(m.received_time) >= from_iso8601_timestamp(?)
    AND from_iso8601_timestamp(m.received_time) < from_iso8601_timestamp(?)
    AND ? IN ('', m.instance)
    AND t.campaignID = ?
),
clicks AS (
  SELECT raw.recipient AS recipient, event_type
  FROM tap_clicks
  WHERE dt BETWEEN ? AND ?
    AND from_iso8601_timestamp(received_time) >= from_iso8601_timestamp(?)
    AND from_iso8601_timestamp(received_time) < from_iso8601_timestamp(?)
    AND ? IN ('', instance)
    AND raw.campaignId = ?
),
hits AS (
  SELECT recipient, event_type FROM messages
  UNION ALL
  SELECT recipient, event_type FROM clicks
)
SELECT lower(recipient) AS recipient,
       count_if(event_type = 'messagesDelivered') AS delivered,
       count_if(event_type = 'messagesBlocked') AS blocked,
       count_if(event_type = 'clicksPermitted') AS clicks_permitted,
       count_if(event_type = 'clicksBlocked') AS clicks_blocked
FROM hits
GROUP BY lower(recipient)
ORDER BY clicks_permitted DESC, delivered DESC, recipient

-- Permitted clicks on URLs whose threat Proofpoint still calls active (the latest status seen in the range).
-- parameters: since_day, until_day, since, until, instance
WITH clicks AS (
  SELECT instance, event_type, event_time, received_time, raw
  FROM tap_clicks
  WHERE dt BETWEEN ? AND ?
    AND from_iso8601_timestamp(received_time) >= from_iso8601_timestamp(?)
    AND from_iso8601_timestamp(received_time) < from_iso8601_timestamp(?)
    AND ? IN ('', instance)
),
latest AS (
  SELECT raw.threatID AS threat_id,
         max_by(raw.threatStatus, from_iso8601_timestamp(received_time)) AS threat_status
  FROM clicks
  GROUP BY raw.threatID
)
SELECT c.event_time AS click_time, c.instance, c.raw.recipient AS recipient, c.raw.url AS url,
       c.raw.classification AS classification, c.raw.clickIP AS click_ip, c.raw.campaignId AS campaign_id
FROM clicks c
JOIN latest l ON c.raw.threatID = l.threat_id
WHERE c.event_type = 'clicksPermitted' AND l.threat_status = 'active'
ORDER BY click_time, recipient, url

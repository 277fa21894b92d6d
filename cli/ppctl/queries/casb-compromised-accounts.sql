-- CASB compromised-account alerts (sub_type Suspicious Login) with the same user's activity events in the range.
-- parameters: since_day, until_day, since, until, instance
WITH casb_rows AS (
  SELECT instance, event_type, event_time, raw
  FROM casb
  WHERE dt BETWEEN ? AND ?
    AND from_iso8601_timestamp(received_time) >= from_iso8601_timestamp(?)
    AND from_iso8601_timestamp(received_time) < from_iso8601_timestamp(?)
    AND ? IN ('', instance)
),
alerts AS (
  SELECT a.instance, a.event_time AS alert_time, a.raw.id AS alert_id, a.raw.severity AS severity,
         a.raw.title AS title, lower(e.user_email) AS user_email
  FROM casb_rows a
  CROSS JOIN UNNEST(a.raw.related_events) AS e(event_id, cloud_service, user_email, event_classification)
  WHERE a.event_type = 'alert' AND a.raw.sub_type = 'Suspicious Login'
)
SELECT a.alert_time, a.instance, a.alert_id, a.severity, a.title, a.user_email,
       v.event_time AS activity_time, v.raw.cloudService AS cloud_service, v.raw.action AS action,
       v.raw.requestIp AS request_ip, v.raw.geographicalContextCountry AS country
FROM alerts a
LEFT JOIN casb_rows v
  ON v.event_type = 'event' AND v.instance = a.instance AND lower(v.raw.userEmail) = a.user_email
ORDER BY a.alert_time, a.alert_id, a.user_email, activity_time

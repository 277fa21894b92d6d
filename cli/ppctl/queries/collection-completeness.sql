-- Collection completeness: events per instance per received hour, hours with none included (as 0).
-- parameters: since_day, until_day, since, until, instance, since_day, until_day, since, until, instance, since_day, until_day, since, until, instance, since_day, until_day, since, until, instance, since, until
WITH arrivals AS (
  SELECT instance, 'tap' AS source, received_time FROM tap_messages
  WHERE dt BETWEEN ? AND ?
    AND from_iso8601_timestamp(received_time) >= from_iso8601_timestamp(?)
    AND from_iso8601_timestamp(received_time) < from_iso8601_timestamp(?)
    AND ? IN ('', instance)
  UNION ALL
  SELECT instance, 'tap' AS source, received_time FROM tap_clicks
  WHERE dt BETWEEN ? AND ?
    AND from_iso8601_timestamp(received_time) >= from_iso8601_timestamp(?)
    AND from_iso8601_timestamp(received_time) < from_iso8601_timestamp(?)
    AND ? IN ('', instance)
  UNION ALL
  SELECT instance, 'casb' AS source, received_time FROM casb
  WHERE dt BETWEEN ? AND ?
    AND from_iso8601_timestamp(received_time) >= from_iso8601_timestamp(?)
    AND from_iso8601_timestamp(received_time) < from_iso8601_timestamp(?)
    AND ? IN ('', instance)
  UNION ALL
  SELECT instance, 'pod' AS source, received_time FROM pod
  WHERE dt BETWEEN ? AND ?
    AND from_iso8601_timestamp(received_time) >= from_iso8601_timestamp(?)
    AND from_iso8601_timestamp(received_time) < from_iso8601_timestamp(?)
    AND ? IN ('', instance)
),
counted AS (
  SELECT instance, source, date_trunc('hour', from_iso8601_timestamp(received_time)) AS hour_start, count(*) AS events
  FROM arrivals
  GROUP BY instance, source, date_trunc('hour', from_iso8601_timestamp(received_time))
),
hours AS (
  SELECT h.hour_start
  FROM UNNEST(sequence(date_trunc('hour', from_iso8601_timestamp(?)),
                       date_trunc('hour', from_iso8601_timestamp(?) - INTERVAL '1' SECOND),
                       INTERVAL '1' HOUR)) AS h(hour_start)
),
instances AS (
  SELECT DISTINCT instance, source FROM counted
)
SELECT i.instance, i.source, h.hour_start, coalesce(c.events, 0) AS events
FROM instances i
CROSS JOIN hours h
LEFT JOIN counted c ON c.instance = i.instance AND c.source = i.source AND c.hour_start = h.hour_start
ORDER BY i.instance, h.hour_start

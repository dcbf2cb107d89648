-- A release's model card: the Markdown of its README.md (or of a file given
-- at publish), shown on the model's page once rendered and sanitised. NULL
-- for a release published without one.
ALTER TABLE releases ADD COLUMN card TEXT;

"""Data contracts: Avro schemas, wire codec, JSON form, topic declarations."""

//! What calling a function means for classification.

/// Built-in functions that write or take cluster-visible locks: a statement calling them is a
/// strong write unless the schema file lists the function as weak.
pub fn writes(name: &str) -> bool {
    matches!(name, "nextval" | "setval" | "lo_create" | "lo_import" | "lo_unlink" | "lo_from_bytea" | "lo_put" | "lo_creat")
        || name.starts_with("pg_advisory")
        || name.starts_with("pg_try_advisory")
}

/// Built-in functions known not to write anything. Any other function may be a volatile user
/// function that writes, so calling it makes a statement a strong write (the safe default).
pub fn read_only(name: &str) -> bool {
    READ_ONLY.binary_search(&name).is_ok()
}

// Sorted: looked up by binary search.
const READ_ONLY: &[&str] = &[
    "abs", "age", "any_value", "array_agg", "array_append", "array_cat", "array_length", "array_lower", "array_position",
    "array_positions", "array_prepend", "array_remove", "array_replace", "array_to_json", "array_to_string", "array_upper",
    "ascii", "avg", "bit_and", "bit_length", "bit_or", "bool_and", "bool_or", "btrim", "cardinality", "cbrt", "ceil",
    "ceiling", "char_length", "character_length", "chr", "clock_timestamp", "coalesce", "col_description", "concat",
    "concat_ws", "corr", "count", "covar_pop", "covar_samp", "cume_dist", "current_catalog", "current_database",
    "current_date", "current_role", "current_schema", "current_schemas", "current_setting", "current_time",
    "current_timestamp", "current_user", "date_bin", "date_part", "date_trunc", "decode", "degrees", "dense_rank", "div",
    "encode", "every", "exp", "extract", "first_value", "floor", "format", "format_type", "gcd", "gen_random_uuid",
    "generate_series", "generate_subscripts", "greatest", "has_schema_privilege", "has_table_privilege", "initcap",
    "isfinite", "json_agg", "json_array_length", "json_build_array", "json_build_object", "json_each",
    "json_extract_path", "json_extract_path_text", "json_object_agg", "json_typeof", "jsonb_agg", "jsonb_array_elements",
    "jsonb_array_length", "jsonb_build_array", "jsonb_build_object", "jsonb_each", "jsonb_extract_path",
    "jsonb_extract_path_text", "jsonb_insert", "jsonb_object_agg", "jsonb_path_query", "jsonb_pretty", "jsonb_set",
    "jsonb_strip_nulls", "jsonb_typeof", "justify_days", "justify_hours", "justify_interval", "lag", "last_value", "lcm",
    "lead", "least", "left", "length", "ln", "localtime", "localtimestamp", "log", "log10", "lower", "lpad", "ltrim",
    "make_date", "make_interval", "make_time", "make_timestamp", "make_timestamptz", "max", "md5", "min", "mod", "mode",
    "now", "nth_value", "ntile", "nullif", "num_nulls", "obj_description", "octet_length", "overlay", "percent_rank",
    "percentile_cont", "percentile_disc", "pg_backend_pid", "pg_column_size", "pg_get_constraintdef", "pg_get_expr",
    "pg_get_indexdef", "pg_get_userbyid", "pg_get_viewdef", "pg_relation_size", "pg_size_pretty", "pg_sleep",
    "pg_table_is_visible", "pg_total_relation_size", "pg_type_is_visible", "pg_typeof", "pi", "position", "power",
    "quote_ident", "quote_literal", "quote_nullable", "radians", "random", "rank", "regexp_count", "regexp_like",
    "regexp_match", "regexp_matches", "regexp_replace", "regexp_split_to_array", "regexp_split_to_table", "repeat",
    "replace", "reverse", "right", "round", "row_number", "row_to_json", "rpad", "rtrim", "session_user", "sign", "split_part",
    "sqrt", "starts_with", "statement_timestamp", "stddev", "stddev_pop", "stddev_samp", "string_agg", "string_to_array",
    "strpos", "substr", "substring", "sum", "timeofday", "to_char", "to_date", "to_hex", "to_json", "to_jsonb", "to_number",
    "to_timestamp", "transaction_timestamp", "translate", "trim", "trunc", "unnest", "upper", "user", "uuid_generate_v4",
    "var_pop", "var_samp", "variance", "version", "width_bucket",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_list_is_sorted_for_binary_search() {
        assert!(READ_ONLY.windows(2).all(|w| w[0] < w[1]), "READ_ONLY must be sorted and unique");
        assert!(read_only("count") && read_only("now") && !read_only("nextval") && !read_only("my_func"));
        assert!(writes("nextval") && writes("pg_advisory_xact_lock") && !writes("count"));
    }
}

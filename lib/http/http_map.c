/* Placeholder until the module lands. */
typedef int kr__placeholder_http_map;

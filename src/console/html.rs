//! HTML text: escaping and the page frame. Every untrusted string goes through [`esc`].

use std::fmt::Write as _;
use std::time::SystemTime;

use axum::response::Html;

/// `text` escaped for HTML text and double- or single-quoted attribute values.
pub(super) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// RFC 3339 time (UTC, seconds), or "—".
pub(super) fn time(t: Option<SystemTime>) -> String {
    t.map_or_else(
        || "—".to_owned(),
        |t| {
            let t = time::OffsetDateTime::from(t);
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        },
    )
}

/// The console's sections: path and label.
const NAV: [(&str, &str); 6] = [
    ("/pair", "Pair"),
    ("/enrollment", "Enrollment"),
    ("/devices", "Devices"),
    ("/vault", "Vault"),
    ("/policies", "Policies"),
    ("/audit", "Audit"),
];

/// A full page for a signed-in operator: navigation (`current` marked), sign-out form, `body`.
pub(super) fn page(title: &str, current: &str, csrf: &str, body: &str) -> Html<String> {
    let mut nav = String::new();
    for (path, label) in NAV {
        let mark = if path == current { " aria-current=\"page\"" } else { "" };
        let _ = write!(nav, "<li><a href=\"{path}\"{mark}>{label}</a></li>");
    }
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · Palyra console</title><link rel=\"stylesheet\" href=\"/assets/console.css\">\
<script src=\"/assets/console.js\" defer></script></head><body>\
<a class=\"skip\" href=\"#main\">Skip to content</a>\
<header><span class=\"brand\">Palyra</span><nav aria-label=\"Sections\"><ul>{nav}</ul></nav>\
<form method=\"post\" action=\"/logout\" class=\"signout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<button type=\"submit\">Sign out</button></form></header>\
<main id=\"main\" tabindex=\"-1\"><h1>{title}</h1>{body}</main>\
<footer><p id=\"live\" role=\"status\" aria-live=\"polite\"></p></footer></body></html>",
        title = esc(title),
        csrf = esc(csrf),
    ))
}

/// A page without navigation (signed out, errors).
pub(super) fn page_plain(title: &str, message: &str) -> Html<String> {
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · Palyra console</title><link rel=\"stylesheet\" href=\"/assets/console.css\"></head><body>\
<header><span class=\"brand\">Palyra</span></header>\
<main id=\"main\"><h1>{title}</h1><p class=\"error\" role=\"alert\">{message}</p>\
<p><a href=\"/pair\">Back to the console</a></p></main></body></html>",
        title = esc(title),
        message = esc(message),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            super::esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}

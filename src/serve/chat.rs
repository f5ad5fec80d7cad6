//! The chat template: how `messages` become one plain prompt.
//!
//! The model is a code-completion model trained on Python files: it has never seen a
//! conversation, only code and its comments. So a chat is rendered as the file it most
//! resembles, a Python file whose comments carry the request:
//!
//! ```text
//! # <system, developer or user message, one "# " per line>
//! <assistant message, verbatim, then a newline>
//! ```
//!
//! and the reply is whatever the model writes next: code that follows the comment. A
//! user message "a function that squares a list" renders as
//! `"# a function that squares a list\n"`.

use super::errors::ServeError;
use super::openai::{Content, Message};

/// Renders `messages` with the template above.
pub fn render(messages: &[Message]) -> Result<String, ServeError> {
    if messages.is_empty() {
        return Err(ServeError::invalid(
            "messages",
            "messages must hold at least one message",
        ));
    }
    let mut prompt = String::new();
    for (i, m) in messages.iter().enumerate() {
        let text = content_text(m.content.as_ref(), i)?;
        match m.role.as_str() {
            "system" | "developer" | "user" => {
                for line in text.lines() {
                    prompt.push_str(if line.is_empty() { "#" } else { "# " });
                    prompt.push_str(line);
                    prompt.push('\n');
                }
            }
            "assistant" => {
                prompt.push_str(&text);
                if !text.ends_with('\n') {
                    prompt.push('\n');
                }
            }
            other => {
                return Err(ServeError::invalid(
                    format!("messages[{i}].role"),
                    format!("role '{other}' is not one of system, developer, user, assistant"),
                ))
            }
        }
    }
    Ok(prompt)
}

/// A message's text: the string, or its text parts joined.
fn content_text(content: Option<&Content>, i: usize) -> Result<String, ServeError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(s)) => Ok(s.clone()),
        Some(Content::Parts(parts)) => parts
            .iter()
            .map(|p| match (p.kind.as_str(), &p.text) {
                ("text", Some(t)) => Ok(t.as_str()),
                _ => Err(ServeError::invalid(
                    format!("messages[{i}].content"),
                    "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported",
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| texts.concat()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, text: &str) -> Message {
        Message {
            role: role.into(),
            content: Some(Content::Text(text.into())),
        }
    }

    #[test]
    fn requests_become_comments_and_replies_code() {
        let prompt = render(&[
            msg("system", "Python only."),
            msg("user", "squares\n\nof a list"),
            msg("assistant", "def squares(xs):"),
        ])
        .unwrap();
        assert_eq!(
            prompt,
            "# Python only.\n# squares\n#\n# of a list\ndef squares(xs):\n"
        );
    }

    #[test]
    fn unknown_roles_and_empty_chats_name_the_field() {
        let e = render(&[msg("wizard", "x")]).unwrap_err();
        assert!(
            matches!(e, ServeError::InvalidRequest { param: Some(p), .. } if p == "messages[0].role")
        );
        assert!(render(&[]).is_err());
    }
}

/// LIFT's prompt, the same at training and at question time (no document in it).
pub fn qa_prompt(title: &str, question: &str) -> String {
    format!("Please answer the question based on \"{title}\".\nQuestion: {question}\nAnswer:")
}

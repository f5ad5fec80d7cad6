//! Validation loss: the mean loss over fixed windows of the validation stream, in eval
//! mode (no dropout) and without gradients. Training logs it every `--eval-every` steps
//! and keeps the best checkpoint by it; `sympathy eval` reports it for a checkpoint.

use crate::data::Batches;
use crate::model::Gpt;

/// Mean loss over the windows starting at `starts`, in eval mode without gradients.
pub fn evaluate(model: &Gpt, batches: &Batches, starts: &[i64]) -> f64 {
    tch::no_grad(|| {
        let mut total = 0.0;
        for chunk in starts.chunks(batches.batch_size() as usize) {
            let (x, y) = batches.windows(chunk);
            let loss = Gpt::loss(&model.forward(&x, false), &y);
            total += loss.double_value(&[]) * chunk.len() as f64;
        }
        total / starts.len() as f64
    })
}

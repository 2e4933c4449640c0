//! `stowage url KEY`: the download URL the library hands out for a key, so an operator
//! can check serving by hand (`curl -I "$(stowage url clips/1/video.mp4)"`).

use clap::Args;

use crate::exit::Exit;

/// Print the download URL the library would hand out for KEY.
///
/// The store comes from the service's environment (STORAGE_TYPE, LOCAL_STORAGE_PATH,
/// BASE_URL, FILES_PATH, S3_BUCKET_NAME, ...): a local store gives
/// {BASE_URL}{FILES_PATH}/{key}, signed with expires and sig when STORAGE_URL_SECRET is
/// set; an S3 store a presigned GET URL (or S3_PUBLIC_BASE_URL/{key}).
///
/// Example:
///   stowage url clips/1/video.mp4
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct UrlArgs {
    /// The object key.
    key: String,
}

pub(crate) async fn run(args: UrlArgs) -> Exit {
    match url(&args.key).await {
        Ok(u) => {
            outln!("{u}");
            Exit::Success
        }
        Err(e) => crate::fatal(&e),
    }
}

async fn url(key: &str) -> stowage::Result<String> {
    let key = stowage::Key::parse(key)?;
    let store = stowage::StoreConfig::from_env()?.open()?;
    store.download_url(&key).await
}
